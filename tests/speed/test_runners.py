"""Runner agreement: ONNX Runtime and TorchScript against eager torch; the bundle's runner choice."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from inference.bundle import Bundle
from inference.errors import BundleError
from inference.onnx_export import ONNX_FILE, SIDECAR_FILE, export_module, export_onnx_command
from inference.runners import OnnxRunner, TorchRunner, TorchScriptRunner, compile_mode, onnx_runs_on

from .conftest import tiny_unet, write_bundle

CPU = torch.device("cpu")
TOLERANCE = 1e-4


def _random(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def test_export_module_onnx_runner_agrees_with_torch_at_other_batch_and_size(tmp_path):
    net = tiny_unet()
    report = export_module(net, (1, 16, 16, 16), tmp_path / "m.onnx", tolerance=TOLERANCE)
    assert report.dynamic_spatial
    assert report.max_abs_diff <= TOLERANCE
    x = _random(5, 1, 24, 16, 32)  # a batch and spatial size never seen at export
    with torch.no_grad():
        expected = net(x)
    got = OnnxRunner(tmp_path / "m.onnx", CPU)(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_cpu_onnx_runner_hands_arena_memory_back_after_each_run(tmp_path):
    export_module(tiny_unet(), (1, 16, 16, 16), tmp_path / "m.onnx", tolerance=TOLERANCE)
    runner = OnnxRunner(tmp_path / "m.onnx", CPU)
    assert runner.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    x = _random(2, 1, 16, 16, 16)
    torch.testing.assert_close(runner(x), runner(x), atol=0, rtol=0)  # repeated runs after shrinking agree


def test_io_bound_onnx_run_writes_into_a_tensor_once_the_output_shape_is_known(tmp_path):
    """The IO-binding path (the one a GPU session takes) run on the CPU provider: the first run of an input
    shape learns the output shape; later runs write into a tensor of it, with the same values."""
    net = tiny_unet()
    export_module(net, (1, 16, 16, 16), tmp_path / "m.onnx")
    runner = OnnxRunner(tmp_path / "m.onnx", CPU)
    x, y = _random(2, 1, 16, 16, 16), _random(1, 1, 24, 16, 16)
    with torch.no_grad():
        expected_x, expected_y = net(x), net(y)
    first = runner._run_bound(x)
    assert runner._output_shapes == {tuple(x.shape): tuple(expected_x.shape)}
    second, other = runner._run_bound(x), runner._run_bound(y)
    assert set(runner._output_shapes) == {tuple(x.shape), tuple(y.shape)}
    torch.testing.assert_close(first, expected_x, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    torch.testing.assert_close(other, expected_y, atol=TOLERANCE, rtol=0)
    assert second.data_ptr() != first.data_ptr()  # each run its own output tensor


class _Branchy(torch.nn.Module):
    """Data-dependent Python branch: tracing freezes the branch taken for the all-zero example input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if bool((x > 0).any()) else x


def test_export_refuses_a_model_onnx_cannot_reproduce_and_leaves_no_file(tmp_path):
    with pytest.raises(BundleError, match="differs from torch"):
        export_module(_Branchy(), (1, 8, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_command_writes_verified_onnx_and_auto_runner_serves_it(models_dir):
    path = write_bundle(models_dir)
    report = export_onnx_command("tiny", [models_dir])
    assert report.max_abs_diff <= report.tolerance
    onnx_bundle, torch_bundle = Bundle(path), Bundle(path)
    onnx_bundle.load(CPU)
    torch_bundle.load(CPU, runner="torch")
    sidecar = json.loads((path / SIDECAR_FILE).read_text())
    assert sidecar["source_sha256"] == torch_bundle.weights_sha256
    assert sidecar["path"] == ONNX_FILE  # relative: the record holds wherever the bundle is copied
    assert isinstance(onnx_bundle.runner, OnnxRunner)
    assert isinstance(torch_bundle.runner, TorchRunner)
    image = _random(1, 1, 20, 30, 18)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25)
    torch.testing.assert_close(
        inferer(image, onnx_bundle.runner), inferer(image, torch_bundle.runner), atol=TOLERANCE, rtol=0
    )


def test_new_weights_beside_an_old_export_are_served_with_torch_and_say_why(models_dir, caplog):
    """A user drops real weights into a bundle whose ONNX export came from the shipped ones: the export is not
    served (it would compute the old model), and the log names the fix."""
    path = write_bundle(models_dir)
    export_onnx_command("tiny", [models_dir])
    network = tiny_unet()
    torch.nn.init.constant_(next(network.parameters()), 0.5)  # other weights, same architecture
    torch.save(network.state_dict(), path / "models" / "model.pt")
    bundle = Bundle(path)
    with caplog.at_level("WARNING", logger="inference.bundle"):
        bundle.load(CPU)
    assert isinstance(bundle.runner, TorchRunner)
    assert "exported from other weights" in caplog.text and "radinfer export-onnx tiny" in caplog.text


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_torch_runner_agrees_with_eager_and_keeps_the_eager_network(models_dir):
    """radinfer.json ``compile``: the torch runner calls the torch.compile'd network (the outputs of eager, to
    float32 rounding); ``bundle.network`` (Grad-CAM's) stays the eager module, with the same weights."""
    compiled, eager = Bundle(write_bundle(models_dir, "compiled", radinfer={"compile": True})), Bundle(
        write_bundle(models_dir, "eager")
    )
    compiled.load(CPU, runner="torch")
    eager.load(CPU, runner="torch")
    assert compiled.runner.compile_mode == "default" and eager.runner.compile_mode is None
    assert compiled.network is compiled.runner.module
    assert not isinstance(compiled.network, torch._dynamo.eval_frame.OptimizedModule)
    x = _random(2, 1, 16, 16, 16)
    torch.testing.assert_close(compiled.runner(x), eager.runner(x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("setting", "mode"),
    [(None, None), (False, None), ("off", None), (True, "default"), ("reduce-overhead", "reduce-overhead")],
)
def test_compile_setting(setting, mode):
    assert compile_mode(setting) == mode


def test_unknown_compile_setting_fails_the_bundle_whichever_runner(models_dir):
    path = write_bundle(models_dir, radinfer={"compile": "fast"})
    for runner in ("torch", "torchscript"):  # checked even where it would not apply
        with pytest.raises(ValueError, match="'compile' must be"):
            Bundle(path).load(CPU, runner=runner)


def test_stale_onnx_export_is_not_served(models_dir):
    path = write_bundle(models_dir)
    export_onnx_command("tiny", [models_dir])
    state = torch.load(path / "models" / "model.pt", weights_only=True)
    state = {k: v + 0.01 for k, v in state.items()}  # retrained weights, export not redone
    torch.save(state, path / "models" / "model.pt")
    bundle = Bundle(path)
    bundle.load(CPU)
    assert isinstance(bundle.runner, TorchRunner)
    with pytest.raises(BundleError, match="exported from other weights"):
        Bundle(path).load(CPU, runner="onnx")


def test_onnx_runner_requested_without_export_is_a_clear_error(models_dir):
    with pytest.raises(BundleError, match=f"no {ONNX_FILE}.*export-onnx tiny"):
        Bundle(write_bundle(models_dir)).load(CPU, runner="onnx")


def test_unknown_runner_kind_is_rejected(models_dir):
    with pytest.raises(BundleError, match="runner 'tensorflow' is unknown"):
        Bundle(write_bundle(models_dir, radinfer={"runner": "tensorflow"})).load(CPU)


def test_torchscript_runner_traced_from_state_dict_agrees_with_torch(models_dir):
    path = write_bundle(models_dir)
    scripted, eager = Bundle(path), Bundle(path)
    scripted.load(CPU, runner="torchscript")
    eager.load(CPU, runner="torch")
    assert isinstance(scripted.runner, TorchScriptRunner)
    x = _random(3, 1, 16, 16, 16)
    torch.testing.assert_close(scripted.runner(x), eager.runner(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("override", "runner_type"),
    [("torchscript", TorchScriptRunner), ("torch", TorchRunner), (None, TorchRunner)],
    ids=["torchscript", "torch", "bundle-default"],
)
def test_engine_runner_setting_overrides_the_bundle_choice(models_dir, override, runner_type):
    from inference.engine import Engine
    from inference.registry import Registry

    write_bundle(models_dir)
    engine = Engine(Registry([models_dir]), "cpu", runner=override)
    bundle = engine.registry.get("tiny")
    engine.ensure_loaded(bundle)
    assert type(bundle.runner) is runner_type


def test_onnx_providers_prefer_tensorrt_then_cuda_when_the_build_has_them(monkeypatch, tmp_path):
    import onnxruntime

    from inference.runners import onnx_providers

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    providers = onnx_providers(torch.device("cuda", 1), tensorrt=True, fp16=True, cache_dir=tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert providers[0][1] == {
        "device_id": 1,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path),
    }
    assert providers[1][1] == {"device_id": 1}
    assert onnx_providers(torch.device("cuda"), tensorrt=False)[0][0] == "CUDAExecutionProvider"
    assert onnx_providers(CPU, tensorrt=True) == ["CPUExecutionProvider"]


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not onnx_runs_on(torch.device("cuda")),
    reason="needs a CUDA device and onnxruntime-gpu",
)
def test_cuda_onnx_runner_binds_input_and_output_on_the_gpu(tmp_path):
    net = tiny_unet()
    export_module(net, (1, 16, 16, 16), tmp_path / "m.onnx")
    runner = OnnxRunner(tmp_path / "m.onnx", torch.device("cuda"))
    assert runner.providers[0] == "CUDAExecutionProvider"
    x = _random(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = net(x)
    for batch in (x, x.cuda(), x.cuda()):  # a host input learns the output shape; device inputs bind it
        out = runner(batch)
        assert out.device == batch.device
        torch.testing.assert_close(out.cpu(), expected, atol=1e-3, rtol=0)


@pytest.mark.skipif(onnx_runs_on(torch.device("cuda")), reason="needs the CPU build of onnxruntime")
def test_onnx_runner_asked_for_cuda_without_a_gpu_build_runs_on_cpu(tmp_path, caplog):
    net = tiny_unet()
    export_module(net, (1, 16, 16, 16), tmp_path / "m.onnx")
    runner = OnnxRunner(tmp_path / "m.onnx", torch.device("cuda"))
    assert runner.device == CPU and runner.providers == ["CPUExecutionProvider"]
    assert "runs on the CPU" in caplog.text
    x = _random(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["bone_age", "lung_nodule", "mammography"])
def test_shipped_bundles_serve_their_checked_onnx_export_on_the_cpu(name):
    """ONNX Runtime ran each shipped model faster than torch on the CPU (benchmarks/RESULTS.md, ninth pass), so
    each ships an export that `runner: auto` serves. Weights retrained without `radinfer export-onnx` fail here
    instead of quietly falling back to torch; the export agrees with torch on a sample of the model's input."""
    from pathlib import Path

    from inference.onnx_export import verified_onnx

    path = Path(__file__).resolve().parents[2] / "models" / name
    onnx_bundle, torch_bundle = Bundle(path), Bundle(path)
    onnx_bundle.load(CPU)
    torch_bundle.load(CPU, runner="torch")
    assert verified_onnx(path, torch_bundle.weights_sha256) == (path / ONNX_FILE, "")
    assert isinstance(onnx_bundle.runner, OnnxRunner)
    sample = torch.rand((2, torch_bundle.input_channels(), *torch_bundle.input_spatial_shape()),
                        generator=torch.Generator().manual_seed(3))
    expected = torch_bundle.runner(sample)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(onnx_bundle.runner(sample), expected, atol=TOLERANCE * scale, rtol=0)
