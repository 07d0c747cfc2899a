"""Modules: multi-step LIF family neurons and the Tempotron."""
from .bn_lif import BNLIF, TDBNLIF
from .neuron import IF, LIF, PLIF, ASGLSchedule, BaseLIF, MultiStep, reset_net
from .tdbn import TDBatchNorm
from .tempotron import GaussianTuning, Tempotron

__all__ = ["LIF", "IF", "PLIF", "ASGLSchedule", "BaseLIF", "MultiStep", "reset_net", "Tempotron", "GaussianTuning",
           "TDBatchNorm", "BNLIF", "TDBNLIF"]
