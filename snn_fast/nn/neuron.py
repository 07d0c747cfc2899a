"""Multi-step spiking neurons that drop into models written for SpikingJelly's ``step_mode='m'`` nodes.

Input ``[T, B, ...]``, output spikes of the same shape (``step_mode='s'``: one step ``[B, ...]`` per
call, the membrane carried from call to call, as SpikingJelly's single-step nodes). The membrane is kept between calls (so a
long sequence can be fed in chunks); ``reset()`` clears it before the next sample, ``detach()``
cuts the graph for truncated BPTT. The option checks happen once in ``__init__``, so a forward pass
never synchronises with the device to validate a parameter.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import backends
from .. import surrogate as _sg
from ..ops.lif import args as lif_args
from ..ops.lif import contract as lif_contract
from ..ops.lif.function import lif_apply


def _f(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


class BaseLIF(nn.Module):
    def __init__(
        self,
        tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate="sigmoid",
        alpha: Optional[float] = None,
        reset_residual: float = 0.0,
        learnable_threshold: bool = False,
        learnable_alpha: bool = False,
        noise_prob: float = 0.0,
        store_v_seq: bool = False,
        backend: str = "auto",
        decay: Optional[float] = None,
        step_mode: str = "m",
        save: str = lif_contract.DEFAULT_SAVE,
        fire_at_threshold: bool = True,
        reset_timing: str = "after_fire",
    ):
        super().__init__()
        self.save = lif_contract.check_save(save)  # what the GPU kernels keep for the backward (lif_multistep)
        k, theta, alpha, flags, sg = lif_args.resolve(
            None if decay is not None else tau, decay, decay_input, v_threshold, v_reset, detach_reset, surrogate,
            alpha, reset_residual, fire_at_threshold, reset_timing,
        )
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        self.flags, self.sg = flags, sg
        self._k = float(k)
        self.v_threshold = nn.Parameter(torch.tensor(float(theta))) if learnable_threshold else float(theta)
        if learnable_alpha and sg.dg_dalpha is None:
            raise ValueError(f"surrogate {sg.name!r} has no dg_dalpha, so alpha cannot be learned")
        if learnable_alpha and sg.dg_dalpha is _sg._zero_dalpha:
            # straight_through, spike_gate: g does not depend on α, so ∂L/∂α ≡ 0 and α would never move.
            raise ValueError(f"learnable_alpha=True: surrogate {sg.name!r} has no width α (∂g/∂α = 0), "
                             "so alpha would never be trained; use a surrogate with a width (e.g. 'sigmoid')")
        backends.check_name(backend)
        self.alpha = nn.Parameter(torch.tensor(float(alpha))) if learnable_alpha else float(alpha)
        self.noise_prob = float(noise_prob)
        self.store_v_seq = store_v_seq
        self.backend = backend
        self.step_mode = step_mode
        self.v: Optional[torch.Tensor] = None
        self.v_seq: Optional[torch.Tensor] = None

    def leak(self):
        """k = 1/τ as used by the kernels (a tensor for learnable τ)."""
        return self._k

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        # a property, so that SpikingJelly's functional.set_step_mode (which sets the attribute of
        # every module that has one) switches a converted model's neurons, and a bad mode is refused
        if mode not in ("m", "s"):
            raise ValueError(f"step_mode must be 'm' ([T, B, ...] per call) or 's' ([B, ...] per call), got {mode!r}")
        self._step_mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self._single_step(x)
        return self._run(x, self.store_v_seq)

    def _run(self, x: torch.Tensor, store_v_seq: bool) -> torch.Tensor:
        """The multi-step forward ``[T, B, ...]``; keeps the last membrane (and the sequence when asked)."""
        lif_args.check_x(x)
        mask = None
        if self.training and self.noise_prob > 0.0:  # ASGL noisy spike; p = 0 in eval (docs/spec.md §4)
            mask = lif_args.noise_mask_like(x, self.noise_prob)
        out = lif_apply(x, self.v, self.leak(), self.v_threshold, self.alpha, self.flags, self.sg, mask,
                        store_v_seq, self.backend, self.save)
        # the state is a plain attribute: set it past nn.Module.__setattr__ (~2 µs of registry checks)
        self.__dict__["v"] = out[1]
        if store_v_seq:
            self.__dict__["v_seq"] = out[2]
        return out[0]

    def _single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step ``[B, ...]``: the fused op over T = 1. With ``store_v_seq`` the membrane after each
        step is appended to ``v_seq`` (``[steps since reset, B, ...]``), as SpikingJelly does."""
        s = self._run(x.unsqueeze(0), False).squeeze(0)  # a view both ways ([0]'s backward allocates)
        if self.store_v_seq:
            step = self.v.unsqueeze(0)
            prev = self.v_seq
            if prev is None or prev.shape[1:] != step.shape[1:] or prev.dtype != step.dtype or prev.device != step.device:
                self.v_seq = step.clone()
            else:
                self.v_seq = torch.cat((prev, step))
        return s

    def reset(self) -> None:
        self.__dict__["v"] = None
        self.__dict__["v_seq"] = None

    def detach(self) -> None:
        if self.v is not None:
            self.v = self.v.detach()
        if self.v_seq is not None:
            self.v_seq = self.v_seq.detach()

    def __getstate__(self):
        # The stored membrane of a forward with grad keeps its graph, which neither deepcopy ("Only
        # Tensors created explicitly by the user support the deepcopy protocol") nor pickle can
        # carry: a copy keeps the values and starts a new graph (what detach() does for truncated BPTT).
        state = self.__dict__.copy()
        for name in ("v", "v_seq"):
            if isinstance(state.get(name), torch.Tensor):
                state[name] = state[name].detach()
        return state

    def __setstate__(self, state):
        state.setdefault("_step_mode", "m")  # pickled before step_mode existed
        state.setdefault("save", lif_contract.DEFAULT_SAVE)  # pickled before save existed
        super().__setstate__(state)

    def extra_repr(self) -> str:
        f = self.flags
        parts = [
            f"v_threshold={_f(self.v_threshold):g}",
            f"v_reset={f.v_reset:g}" if f.hard_reset else "v_reset=None",
            f"surrogate={self.sg.name}", f"alpha={_f(self.alpha):g}", f"detach_reset={f.detach_reset}",
        ]
        if f.reset_residual:
            parts.append(f"reset_residual={f.reset_residual:g}")
        if not f.fire_at_threshold:
            parts.append("fire_at_threshold=False")
        if f.reset_timing != "after_fire":
            parts.append(f"reset_timing={f.reset_timing!r}")
        if self.noise_prob:
            parts.append(f"noise_prob={self.noise_prob:g}")
        parts.append(f"backend={self.backend}")
        if self.save != lif_contract.DEFAULT_SAVE:
            parts.append(f"save={self.save}")
        if self.step_mode != "m":
            parts.append(f"step_mode={self.step_mode}")
        return ", ".join(parts)


class LIF(BaseLIF):
    """Leaky integrate-and-fire, the counterpart of SpikingJelly's ``LIFNode(step_mode='m')``.

    Give ``tau`` (> 1) or ``decay`` (λ = 1 − 1/τ, the STBP/CSBP form; then use
    ``decay_input=False``). ``learn_tau=True`` makes τ a parameter.
    """

    def __init__(self, tau: float = 2.0, *args, learn_tau: bool = False, **kw):
        super().__init__(tau, *args, **kw)
        self.learn_tau = learn_tau
        if learn_tau and self._k == 0.0:
            raise ValueError("learn_tau=True needs a finite tau (> 1); tau=inf is the IF neuron")
        if learn_tau:
            self.tau = nn.Parameter(torch.tensor(1.0 / self._k))

    def leak(self):
        return 1.0 / self.tau if self.learn_tau else self._k

    def extra_repr(self) -> str:
        tau = _f(self.tau) if self.learn_tau else 1.0 / self._k
        return f"tau={tau:g}, decay_input={self.flags.decay_input}, " + super().extra_repr()


class IF(BaseLIF):
    """Integrate-and-fire (no leak): H = V + X."""

    def __init__(self, *args, **kw):
        for name in ("tau", "decay", "decay_input"):
            if name in kw:
                raise TypeError(f"IF has no leak: it takes no {name!r} (use LIF)")
        super().__init__(math.inf, False, *args, **kw)

    def leak(self):
        return 0.0


class PLIF(BaseLIF):
    """Parametric LIF: 1/τ = sigmoid(w) with w learnable, initialised so that τ = ``init_tau``."""

    def __init__(self, init_tau: float = 2.0, *args, **kw):
        try:
            it = float(init_tau)
        except (TypeError, ValueError):
            it = None  # not a number: the tau check below names it
        if it is not None and math.isinf(it):
            # τ = inf is the IF neuron for LIF, but PLIF learns w with 1/τ = sigmoid(w): w = −inf
            # would be stuck (sigmoid′(−inf) = 0) and the forward would compute with an infinite w.
            raise ValueError(f"init_tau must be a finite number > 1, got {init_tau!r} "
                             "(1/τ = sigmoid(w) needs a finite w; use IF for no leak)")
        super().__init__(init_tau, *args, **kw)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def leak(self):
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        return f"tau={1.0 / torch.sigmoid(self.w).item():g}, decay_input={self.flags.decay_input}, " + super().extra_repr()


class MultiStep(nn.Module):
    """Apply a stateless module to ``[T, B, ...]`` by folding T into the batch (docs/spec.md §7)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MultiStep: x must be [T, B, ...] (at least 2 dims), got {shape}")
        T, B = x.shape[:2]
        y = self.module(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


class ASGLSchedule:
    """ASGL's noise schedule (docs/spec.md §4): p ← γ·p at each milestone, for every neuron of ``net``.

    Call ``step()`` once per epoch (or per step, matching the milestones you give).
    """

    def __init__(self, net: nn.Module, gamma: float = 0.5, milestones=()):
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.net, self.gamma, self.milestones, self.count = net, gamma, set(milestones), 0

    def step(self) -> None:
        self.count += 1
        if self.count in self.milestones:
            for m in self.net.modules():
                if isinstance(m, BaseLIF):
                    m.noise_prob *= self.gamma


def reset_net(net: nn.Module) -> None:
    """Reset the membrane of every neuron in ``net`` (like ``spikingjelly...functional.reset_net``),
    including SpikingJelly's stateful modules that ``snn_fast.convert(..., strict=False)`` left in place."""
    for m in net.modules():
        if isinstance(m, BaseLIF) or (type(m).__module__.startswith("spikingjelly.") and callable(getattr(m, "reset", None))):
            m.reset()
