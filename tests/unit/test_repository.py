import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bundle import repository
from bundle.integrity import BundleError, check_bundle, check_probe, open_session
from bundle.manifest import Manifest
from tests.conftest import ROOT


def copy_bundle_builder(source):
    """A `build` callback that republishes an existing bundle under the new version number."""
    template = Manifest.read(source)

    def build(staging, version):
        for path in source.iterdir():
            if path.name != "manifest.json":
                shutil.copy(path, staging / path.name)
        manifest = Manifest.model_validate({**json.loads(template.model_dump_json()), "version": version})
        manifest.write(staging)
        return manifest

    return build


def test_publish_adds_max_plus_one_and_never_overwrites(trained, tmp_path):
    folder, _, _ = trained
    repo = tmp_path / "models"
    (repo / "iris" / "7").mkdir(parents=True)  # a gap and an unrelated empty folder
    (repo / "iris" / "notes").mkdir()
    first = repository.publish(repo, "iris", copy_bundle_builder(folder))
    second = repository.publish(repo, "iris", copy_bundle_builder(folder))
    assert (first.name, second.name) == ("8", "9")
    assert repository.versions(repo, "iris") == [7, 8, 9]
    assert Manifest.read(second).version == 9
    assert repository.model_names(repo) == ["iris"]
    assert not list((repo / "iris").glob(".staging-*"))


def test_published_files_are_readable_by_others(trained):
    folder, _, _ = trained
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())
    assert all(p.stat().st_mode & 0o044 for p in folder.iterdir())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_publish_killed_midway_leaves_no_version_and_the_next_one_cleans_up(trained, tmp_path):
    """SIGKILL the publisher after half the files are written: readers must never see a partial version."""
    folder, _, _ = trained
    repo = tmp_path / "models"
    script = textwrap.dedent(
        f"""
        import os, shutil, signal
        from pathlib import Path
        from bundle import repository

        def build(staging, version):
            shutil.copy(Path({str(folder)!r}) / "model.onnx", staging / "model.onnx")
            shutil.copy(Path({str(folder)!r}) / "scaler.onnx", staging / "scaler.onnx")
            os.kill(os.getpid(), signal.SIGKILL)  # the crash, midway through the bundle

        repository.publish(Path({str(repo)!r}), "iris", build)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert repository.versions(repo, "iris") == []  # nothing half-written is visible as a version
    assert len(list((repo / "iris").glob(".staging-*"))) == 1
    published = repository.publish(repo, "iris", copy_bundle_builder(folder))
    assert published.name == "1" and check_bundle(published).version == 1
    assert not list((repo / "iris").glob(".staging-*"))


def test_triton_config_parses_with_tritons_own_protobuf(trained):
    _, manifest, repo = trained
    config = text_format.Parse((repo / "iris" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "iris" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == repository.TRITON_MAX_BATCH_SIZE
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("features", model_config_pb2.TYPE_FP32, [4])
    assert (out.name, out.data_type, list(out.dims)) == ("probabilities", model_config_pb2.TYPE_FP32, [3])
    assert out.label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert (repo / "iris" / "labels.txt").read_text().splitlines() == manifest.classes


@pytest.fixture
def bundle_copy(trained, tmp_path):
    folder, _, _ = trained
    target = tmp_path / "iris" / "1"
    shutil.copytree(folder, target)
    return target


def test_check_bundle_accepts_an_intact_version(bundle_copy):
    assert check_bundle(bundle_copy).name == "iris"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.onnx").write_bytes(b"garbage"), r"model.onnx: sha256 is"),
        (lambda f: (f / "scaler.onnx").unlink(), r"scaler.onnx: missing"),
        (lambda f: (f / "manifest.json").unlink(), r"manifest.json is missing"),
        (lambda f: (f / "manifest.json").write_text("{}"), r"manifest.json: invalid"),
        (lambda f: f.rename(f.parent / "2"), r"manifest says iris/1, folder is iris/2"),
    ],
)
def test_check_bundle_refuses_damage_and_says_what(bundle_copy, damage, message):
    damage(bundle_copy)
    target = bundle_copy if bundle_copy.exists() else bundle_copy.parent / "2"
    with pytest.raises(BundleError, match=message):
        check_bundle(target)


def test_check_bundle_refuses_a_graph_that_is_not_onnx_even_with_a_matching_hash(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"not onnx")
    manifest = Manifest.read(bundle_copy)
    files = {**manifest.files, "model.onnx": __import__("bundle.atomic").atomic.sha256_file(bundle_copy / "model.onnx")}
    Manifest.model_validate({**json.loads(manifest.model_dump_json()), "files": files}).write(bundle_copy)
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        check_bundle(bundle_copy)


def test_the_parity_probe_recorded_at_training_must_still_hold(bundle_copy):
    manifest = Manifest.read(bundle_copy)
    assert manifest.probe is not None and len(manifest.probe.inputs) == 8
    session = open_session(bundle_copy / "model.onnx")
    check_probe(session, manifest, bundle_copy / "model.onnx")  # as trained: passes
    shifted = [[p + 0.01 for p in row] for row in manifest.probe.probabilities]
    drifted = manifest.model_copy(update={"probe": manifest.probe.model_copy(update={"probabilities": shifted})})
    with pytest.raises(BundleError, match=r"parity probe differs from training by 1\.0") as error:
        check_probe(session, drifted, bundle_copy / "model.onnx")
    assert error.value.reason == "parity_mismatch"
