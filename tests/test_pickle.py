"""Every module of snn_fast.nn pickles, torch.save's whole, deep-copies (also after a forward with
learnable parameters, when the stored membrane carries a graph) and round-trips its state_dict."""
import copy
import io
import pickle

import pytest
import torch

import snn_fast.nn as snn
from snn_fast import surrogate as S

torch.manual_seed(0)


def _modules():
    """(id, factory, input) for every module kind; the LIF family under every built-in surrogate and
    with each learnable parameter."""
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out = []
    for name in S.names():
        out.append((f"LIF-{name}", lambda name=name: snn.LIF(surrogate=name), x))
    out += [
        ("LIF-learn_tau", lambda: snn.LIF(3.0, learn_tau=True, learnable_threshold=True), x),
        ("LIF-learnable_alpha", lambda: snn.LIF(surrogate="super_spike", learnable_alpha=True), x),
        ("LIF-soft-decay", lambda: snn.LIF(decay=0.5, decay_input=False, v_reset=None, store_v_seq=True), x),
        ("LIF-single-step", lambda: snn.LIF(step_mode="s", store_v_seq=True), x[0]),
        ("IF", lambda: snn.IF(v_threshold=0.5, detach_reset=True), x),
        ("PLIF", lambda: snn.PLIF(3.0, learnable_threshold=True), x),
        ("PLIF-noise", lambda: snn.PLIF(noise_prob=0.5, surrogate="q_pseudo_spike", alpha=3.0), x),
        ("MultiStep", lambda: snn.MultiStep(torch.nn.Linear(3, 5).double()), x),
        ("TDBatchNorm", lambda: snn.TDBatchNorm(2, alpha=0.5).double(), x.transpose(1, 2).unsqueeze(-1)),
        ("Tempotron", lambda: snn.Tempotron(3, 2, T=8).double(), torch.tensor([[0.0, 3.0, -1.0]], dtype=torch.float64)),
    ]
    return out


CASES = _modules()
IDS = [c[0] for c in CASES]


def _run(m, x):
    torch.manual_seed(1)  # the noisy spike's mask
    return m(x)


def _params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same_state(a, b):
    sa, sb = _params(a), _params(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for name in ("v", "v_seq"):
        va, vb = getattr(a, name, None), getattr(b, name, None)
        assert (va is None) == (vb is None), name
        if va is not None:
            assert torch.equal(va, vb) and vb.grad_fn is None, name


def _copies(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return {
        "pickle": pickle.loads(pickle.dumps(m)),
        "torch.save": torch.load(buf, weights_only=False),
        "deepcopy": copy.deepcopy(m),
    }


@pytest.mark.parametrize("name,make,x", CASES, ids=IDS)
def test_copies_before_and_after_forward(name, make, x):
    m = make()
    for c in _copies(m).values():  # fresh
        _same_state(m, c)
    x = x.clone().requires_grad_(True)
    y = _run(m, x)  # the stored membrane now carries a graph (x requires grad, or a learnable parameter)
    if getattr(m, "v", None) is not None:
        assert m.v.grad_fn is not None
    copies = _copies(m)
    for c in copies.values():
        _same_state(m, c)
        assert type(c) is type(m)
    y.sum().backward()  # the original's graph is untouched by the copies
    nxt = _run(m, x.detach())
    for how, c in copies.items():  # a copy continues from the same state: the same next output
        assert torch.equal(_run(c, x.detach()), nxt), how


@pytest.mark.parametrize("name,make,x", CASES, ids=IDS)
def test_state_dict_round_trip(name, make, x):
    torch.manual_seed(2)
    a = make()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.rand_like(p) * 0.1)  # away from the initial values, so a miss is seen
    b = make()
    b.load_state_dict(a.state_dict())
    _same_state(a, b)
    assert torch.equal(_run(a, x), _run(b, x))


def test_surrogate_pickles_by_name():
    for n in S.names():
        s = S.get(n)
        assert pickle.loads(pickle.dumps(s)) is s
        assert copy.deepcopy(s) is s
    # a user surrogate made of lambdas: a module using it pickles while it is registered
    S.register_surrogate("test_pickle_lambda", lambda x, a: torch.sigmoid(x),
                         lambda x, a: torch.sigmoid(x) * (1 - torch.sigmoid(x)))
    try:
        m = snn.LIF(surrogate="test_pickle_lambda", alpha=1.0)
        m2 = pickle.loads(pickle.dumps(m))
        assert m2.sg is S.get("test_pickle_lambda")
    finally:
        S.unregister_surrogate("test_pickle_lambda")


def test_unregistered_surrogate_pickles_field_by_field():
    base = S.get("sigmoid")
    s = S.Surrogate("not_registered", -1, 2.0, base.g, base.dg, base.dg_dalpha)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2 == s and s2 is not s


def test_module_with_user_surrogate_in_the_kernels_pickles_by_name():
    """A module whose surrogate a user registered with Triton functions and a learnable α:
    pickled by name, loaded back as the one registered object, and the copy runs the same (on the
    fused 'cpu' path where the C++ extension is built)."""
    import user_surrogates

    user_surrogates.register_all()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for name in user_surrogates.NAMES:
        m = snn.LIF(surrogate=name, learnable_alpha=S.get(name).alpha is not None)
        m2 = pickle.loads(pickle.dumps(m))
        assert m2.sg is S.get(name)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        m3 = torch.load(buf, weights_only=False)
        assert m3.sg is S.get(name)
        outs = [_run(k, x) for k in (m, m2, m3)]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
