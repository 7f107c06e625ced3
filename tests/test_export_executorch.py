"""ExecuTorch / XNNPACK export of the trained CI model: fp32 parity in the runtime, delegation gate,
int8 .pte, BundledProgram verification, short export errors."""

from __future__ import annotations

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
from mbv3_mobile.quantize.pt2e import calibration_images, quantize_ptq, real_images
from mbv3_mobile.verify.compare import compare_logits

N_PARITY = 500


@pytest.fixture(scope="module")
def ckpt(trained_ci_checkpoint):
    return load_checkpoint(trained_ci_checkpoint)


@pytest.fixture(scope="module")
def test_images(ckpt):
    return real_images(ckpt.preprocessing, N_PARITY, split="test")


@pytest.fixture(scope="module")
def fp32_program(ckpt, test_images):
    return export_to_executorch(ckpt.model.eval(), test_images[0][:1])


@pytest.fixture(scope="module")
def pte_path(fp32_program, tmp_path_factory):
    return write_pte(fp32_program, tmp_path_factory.mktemp("pte") / "model_fp32.pte")


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


def test_pte_written_atomically(pte_path, fp32_program):
    assert pte_path.read_bytes() == fp32_program.buffer
    assert pte_path.stat().st_size > 100_000
    assert not [p for p in pte_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_delegation_gate_passes_for_mobilenetv3(fp32_program):
    report = fp32_program.delegation
    assert report.ok and report.delegated_subgraphs == 1
    assert report.violations == []
    # every conv / linear / activation / add / mul / pool is inside the delegate
    for op, counts in report.by_op.items():
        if any(k in op for k in ("convolution", "linear", "addmm", "hardswish", "hardtanh", "relu", "add", "mul", "mean", "avg_pool")):
            assert counts["non_delegated"] == 0, op
    assert {o["op"] for o in report.outside} <= {"getitem", "dim_order_ops._to_dim_order_copy.default"}
    summary = report.to_dict()
    assert summary["non_delegated_compute_ops"] == [] and summary["delegated_nodes"] > 100


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


def test_run_pte_pads_to_the_program_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    lowered = export_to_executorch(model, torch.randn(4, 3, 16, 16))
    x = torch.randn(10, 3, 16, 16)
    out = run_pte(lowered, x)
    with torch.no_grad():
        assert out.shape == (10, 5) and (out - model(x)).abs().max() < 1e-4
    with pytest.raises(UserError, match=r"takes images of shape \(N, 3, 16, 16\); got \(2, 3, 8, 8\)"):
        run_pte(lowered, torch.randn(2, 3, 8, 8))


def test_bundled_program_verifies_in_runtime(ckpt, fp32_program, pte_path, test_images, tmp_path):
    x = test_images[0][:5]
    with torch.no_grad():
        expected = ckpt.model.eval()(x)
    path = write_bundled_program(tmp_path / "model_fp32.bpte", fp32_program, x, expected)
    assert bundled_case_count(path) == 5
    assert verify_bundled_program(path) == {"cases": 5, "rtol": 1e-5, "atol": 1e-4}
    # from the published .pte file itself: the bundle embeds exactly its bytes
    from_file = bundle_program(pte_path, x, expected)
    assert bundled_program_bytes(from_file) == pte_path.read_bytes()
    assert verify_bundled_program(from_file)["cases"] == 5
    with pytest.raises(ExportError, match="do not fit"):
        bundle_program(pte_path, x[:, :, :16], expected)


def test_bundled_program_with_tampered_outputs_fails(ckpt, fp32_program, test_images):
    x = test_images[0][:4]
    with torch.no_grad():
        expected = ckpt.model.eval()(x)
    tampered = expected.clone()
    tampered[2, 7] += 0.01
    data = bundle_program(fp32_program, x, tampered)
    with pytest.raises(BundleVerificationError, match="test case 2/4"):
        verify_bundled_program(data)
    with pytest.raises(BundleVerificationError, match="not a BundledProgram"):
        verify_bundled_program(fp32_program.buffer)


@pytest.mark.slow
def test_int8_ptq_pte_is_delegated_and_accurate(ckpt, fp32_program, test_images, tmp_path):
    x, labels = test_images
    calib = calibration_images(ckpt.preprocessing, 256)
    quantized = quantize_ptq(ckpt.model, calib, progress=False)
    lowered = export_to_executorch(quantized, x[:1])
    assert lowered.delegation.ok
    assert len(lowered.buffer) < 0.5 * len(fp32_program.buffer)  # int8 weights
    path = write_pte(lowered, tmp_path / "model_int8.pte")
    with torch.no_grad():
        eager = ckpt.model.eval()(x)
    report = compare_logits(eager, run_pte(path, x), labels)
    assert report["top1_drop"] <= 0.015 and report["top1_agreement"] >= 0.95, report
    # golden outputs of the int8 program itself make a bundle that verifies on the runtime
    golden = run_pte(path, x[:3])
    verify_bundled_program(bundle_program(lowered, x[:3], golden), atol=1e-5)


def test_run_on_dataset(pte_path, ckpt, fashion_test):
    subset = fashion_test.subset(range(64))
    logits, labels = run_pte_on_dataset(pte_path, subset, ckpt.preprocessing, chunk=25)
    assert logits.shape == (64, 10) and torch.equal(labels, subset.labels)
    from mbv3_mobile.data.datasets import BatchTransform

    with torch.no_grad():
        eager = ckpt.model.eval()(BatchTransform(ckpt.preprocessing)(subset.images))
    assert compare_logits(eager, logits)["max_abs_dlogit"] < 1e-4


@pytest.mark.slow
def test_drift_localisation_names_the_perturbed_block(ckpt, test_images):
    """A deliberately broken export (one depthwise conv's weights scaled inside the exported
    program, as an exporter bug would): the .pte fails parity, and ETDump/Inspector per-op
    outputs name the block; the intact program departs nowhere."""
    from mbv3_mobile.export.executorch.debug import debug_module_outputs
    from mbv3_mobile.export.executorch.lower import lower
    from mbv3_mobile.graph import export_program
    from mbv3_mobile.verify.drift import localize

    image = test_images[0][:1]
    model = ckpt.model.eval()
    good = export_program(model, image)
    clean = localize(model, image, debug_module_outputs(good, image), 1e-4)
    assert clean.module is None and len(clean.compared) > 50, clean.table()
    bad = export_program(model, image)
    key = "features.7.block.1.0.weight"  # one depthwise conv; a new tensor, the model's stays intact
    bad.state_dict[key] = torch.nn.Parameter(bad.state_dict[key].detach() * 1.05, requires_grad=False)
    assert not torch.equal(bad.state_dict["features.7.block.1.0.weight"], model.features[7].block[1][0].weight)
    report = compare_logits(model(test_images[0][:50]), run_pte(lower(bad).buffer, test_images[0][:50]))
    assert report["max_abs_dlogit"] > 1e-3  # the broken .pte really fails the fp32 gate
    drift = localize(model, image, debug_module_outputs(bad, image), 1e-4)
    assert drift.module is not None and drift.module.startswith("features.7.block.1"), drift.table()
