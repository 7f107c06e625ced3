"""ExecuTorch / XNNPACK export of the trained CI model: fp32 parity in the runtime, delegation gate,
int8 .pte, BundledProgram verification, short export errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.export.executorch.bundle import (
    BundleVerificationError,
    bundle_program,
    bundled_case_count,
    bundled_program_bytes,
    verify_bundled_program,
    write_bundled_program,
)
from mbv3_mobile.export.executorch.lower import DelegationError, check_delegation, export_to_executorch, write_pte
from mbv3_mobile.export.executorch.runtime import program_input_shape, run_pte, run_pte_on_dataset
from mbv3_mobile.graph import ExportError
from mbv3_mobile.model.checkpoint import load_checkpoint
from mbv3_mobile.quantize.pt2e import real_images
from mbv3_mobile.verify.compare import compare_logits

N_PARITY = 500


@pytest.fixture(scope="module")
def ckpt(trained_ci_checkpoint):
    return load_checkpoint(trained_ci_checkpoint)


@pytest.fixture(scope="module")
def test_images(ckpt):
    return real_images(ckpt.preprocessing, N_PARITY, split="test")


@pytest.fixture(scope="module")
def pte_path(ci_android):
    """The fp32 .pte `mbv3 export android` published for the CI checkpoint (lowered once per run)."""
    return ci_android / "model_fp32.pte"


@pytest.fixture(scope="module")
def manifest(ci_android):
    return json.loads((ci_android / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny_program():
    """A small conv net lowered here, in this process: the LoweredProgram API itself."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return model, export_to_executorch(model, torch.randn(4, 3, 16, 16))


def test_fp32_pte_parity_with_eager(ckpt, pte_path, test_images):
    x, _ = test_images
    assert program_input_shape(pte_path) == (1, 3, 32, 32)
    with torch.no_grad():
        eager = ckpt.model.eval()(x)
    report = compare_logits(eager, run_pte(pte_path, x))
    assert report["images"] == N_PARITY
    assert report["max_abs_dlogit"] <= 1e-4 and report["top1_agreement"] == 1.0
    # the eager model's predictions vary over real images (trained weights, not a constant class)
    assert len(eager.argmax(1).unique()) == 10


def test_pte_written_atomically(tiny_program, pte_path, tmp_path):
    _, lowered = tiny_program
    for source in (lowered, pte_path.read_bytes(), pte_path):  # a LoweredProgram, bytes or a path
        written = write_pte(source, tmp_path / "model.pte")
        assert written.read_bytes() == (lowered.buffer if source is lowered else pte_path.read_bytes())
    assert pte_path.stat().st_size > 100_000
    assert [p.name for p in tmp_path.iterdir()] == ["model.pte"]  # no temporary file left beside it


def test_delegation_gate_passes_for_mobilenetv3(manifest):
    for variant in ("fp32", "ptq"):
        report = manifest["delegation"][variant]
        assert report["delegated_subgraphs"] == 1 and report["non_delegated_compute_ops"] == []
        # every conv / linear / activation / add / mul / pool is inside the delegate
        for op, counts in report["by_op"].items():
            if any(k in op for k in ("convolution", "linear", "addmm", "hardswish", "hardtanh", "relu", "add", "mul", "mean", "avg_pool")):
                assert counts["non_delegated"] == 0, (variant, op)
        assert set(report["outside_allowed"]) <= {"getitem", "dim_order_ops._to_dim_order_copy.default"}
        assert report["delegated_nodes"] > 100


class _RunningSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)  # no XNNPACK kernel


class _NotDelegable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.head = nn.Sequential(nn.ReLU(), _RunningSum())

    def forward(self, x):
        return self.head(self.stem(x))


def test_delegation_gate_trips_on_non_delegable_op():
    with pytest.raises(DelegationError) as info:
        export_to_executorch(_NotDelegable().eval(), torch.randn(1, 3, 8, 8))
    err = info.value
    assert isinstance(err, UserError)
    assert "aten.cumsum" in str(err) and "head.1" in str(err) and "_RunningSum" in str(err)
    assert err.op == "aten.cumsum.default" and err.module == "head.1"
    assert [v["op"] for v in err.report.violations] == ["aten.cumsum.default"]
    # without the gate it lowers (portable kernel), and the report still names the op
    lowered = export_to_executorch(_NotDelegable().eval(), torch.randn(1, 3, 8, 8), require_full_delegation=False)
    assert not lowered.delegation.ok
    with pytest.raises(DelegationError):
        check_delegation(lowered.delegation)


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x


def test_export_failure_is_one_short_error(capsys):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), _DataDependent())).eval()
    with pytest.raises(ExportError) as info:
        export_to_executorch(model, torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message and len(message) < 600
    assert "'1.1'" in message and "x.sum() > 0" in message
    assert info.value.module == "1.1"
    assert "def forward" not in capsys.readouterr().err  # torch's partial-graph dump is swallowed


@torch.library.custom_op("mbv3_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:  # an op with no ExecuTorch kernel (no out variant)
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class _CustomOp(nn.Module):
    def forward(self, x):
        return torch.ops.mbv3_test.twice(x)


def test_lowering_failure_names_op_and_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), _CustomOp())).eval()
    with pytest.raises(DelegationError, match=r"mbv3_test\.twice\.default in 1\.1 \(_CustomOp\)"):
        export_to_executorch(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ExportError) as info:  # past the gate, to_executorch finds no kernel for it
        export_to_executorch(model, torch.randn(1, 3, 8, 8), require_full_delegation=False)
    message = str(info.value)
    assert "to_executorch" in message and "mbv3_test.twice" in message and "1.1 (_CustomOp)" in message
    assert "\n" not in message and info.value.module == "1.1"


def test_training_mode_model_is_refused(ckpt):
    import copy

    with pytest.raises(ExportError, match="eval"):
        export_to_executorch(copy.deepcopy(ckpt.model).train(), torch.zeros(1, 3, 32, 32))


def test_run_pte_pads_to_the_program_batch(tiny_program):
    model, lowered = tiny_program
    x = torch.randn(10, 3, 16, 16)
    out = run_pte(lowered, x)
    with torch.no_grad():
        assert out.shape == (10, 5) and (out - model(x)).abs().max() < 1e-4
    with pytest.raises(UserError, match=r"takes images of shape \(N, 3, 16, 16\); got \(2, 3, 8, 8\)"):
        run_pte(lowered, torch.randn(2, 3, 8, 8))


def test_bundled_program_verifies_in_runtime(ckpt, tiny_program, pte_path, test_images, tmp_path):
    x = test_images[0][:5]
    with torch.no_grad():
        expected = ckpt.model.eval()(x)
    # from the published .pte file itself: the bundle embeds exactly its bytes, no re-lowering
    path = write_bundled_program(tmp_path / "model_fp32.bpte", pte_path, x, expected)
    assert bundled_case_count(path) == 5 and bundled_program_bytes(path) == pte_path.read_bytes()
    assert verify_bundled_program(path) == {"cases": 5, "rtol": 1e-5, "atol": 1e-4}
    with pytest.raises(ExportError, match="do not fit"):
        bundle_program(pte_path, x[:, :, :16], expected)
    # from a LoweredProgram in memory (its batch is 4: the cases are cut to it)
    model, lowered = tiny_program
    xs = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        data = bundle_program(lowered, xs, model(xs))
    assert bundled_program_bytes(data) == lowered.buffer and verify_bundled_program(data)["cases"] == 2


def test_bundled_program_with_tampered_outputs_fails(ckpt, pte_path, test_images):
    x = test_images[0][:4]
    with torch.no_grad():
        expected = ckpt.model.eval()(x)
    tampered = expected.clone()
    tampered[2, 7] += 0.01
    data = bundle_program(pte_path, x, tampered)
    with pytest.raises(BundleVerificationError, match="test case 2/4"):
        verify_bundled_program(data)
    with pytest.raises(BundleVerificationError, match="not a BundledProgram"):
        verify_bundled_program(pte_path.read_bytes())


def test_int8_ptq_pte_is_delegated_and_accurate(ckpt, ci_android, manifest, pte_path, test_images):
    """The int8 PTQ .pte the pipeline published (calibrated on 100 real training pictures): int8
    weights, fully delegated, accurate on real test pictures here, and its golden outputs make a
    bundle that verifies on the runtime."""
    x, labels = test_images
    path = ci_android / "model_int8.pte"
    assert manifest["delegation"]["ptq"]["non_delegated_compute_ops"] == []
    assert path.stat().st_size < 0.5 * pte_path.stat().st_size  # int8 weights
    with torch.no_grad():
        eager = ckpt.model.eval()(x)
    report = compare_logits(eager, run_pte(path, x), labels)
    assert report["top1_drop"] <= 0.015 and report["top1_agreement"] >= 0.95, report
    golden = run_pte(path, x[:3])
    verify_bundled_program(bundle_program(path, x[:3], golden), atol=1e-5)


def test_run_on_dataset(pte_path, ckpt, fashion_test):
    subset = fashion_test.subset(range(64))
    logits, labels = run_pte_on_dataset(pte_path, subset, ckpt.preprocessing, chunk=25)
    assert logits.shape == (64, 10) and torch.equal(labels, subset.labels)
    from mbv3_mobile.data.datasets import BatchTransform

    with torch.no_grad():
        eager = ckpt.model.eval()(BatchTransform(ckpt.preprocessing)(subset.images))
    assert compare_logits(eager, logits)["max_abs_dlogit"] < 1e-4


@pytest.mark.slow
def test_drift_localisation_names_the_perturbed_block(ckpt, test_images, tmp_path):
    """A deliberately broken .pte (one depthwise conv's weights scaled by 1.05 in the program's bytes,
    as a faulty serialiser would): it fails parity, and ETDump/Inspector per-op outputs name the
    block; the intact program departs nowhere. One per-op lowering serves both (lowering is the cost)."""
    import copy

    import numpy as np

    from mbv3_mobile.export.executorch.debug import DebugProgram
    from mbv3_mobile.graph import export_program
    from mbv3_mobile.verify.drift import localize

    image = test_images[0][:1]
    model = ckpt.model.eval()
    intact = DebugProgram(export_program(model, image))
    clean = localize(model, image, intact(image), 1e-4)
    assert clean.module is None and len(clean.compared) > 50, clean.table()
    # XNNPACK stores a depthwise conv's weights as [1, kh, kw, C]: found once in the .pte, scaled in place
    weight = model.features[7].block[1][0].weight.detach().permute(1, 2, 3, 0).contiguous().numpy()
    data = Path(intact.lowered.pte).read_bytes()
    assert data.count(weight.tobytes()) == 1
    bad_pte = tmp_path / "broken.pte"
    bad_pte.write_bytes(data.replace(weight.tobytes(), (weight * np.float32(1.05)).tobytes()))
    broken = copy.copy(intact)
    broken.lowered = copy.copy(intact.lowered)
    broken.lowered.pte = str(bad_pte)
    # the broken program really fails the fp32 gate (run as lowered, one delegate per op)
    report = compare_logits(model(test_images[0][:50]), run_pte(str(bad_pte), test_images[0][:50]))
    assert report["max_abs_dlogit"] > 1e-3
    drift = localize(model, image, broken(image), 1e-4)
    assert drift.module is not None and drift.module.startswith("features.7.block.1"), drift.table()
