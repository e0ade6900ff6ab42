import json
import os
import sys

import pytest

from edgeslim._io import atomic_directory, atomic_write_json
from edgeslim.artifact import Manifest, ModelFile, Preprocessing, TensorInfo, load_manifest, write_artifact
from edgeslim.errors import ArtifactError, IntegrityError


def _manifest(**kw):
    base = dict(
        name="m",
        classes=["a", "b"],
        critical=[1],
        input=TensorInfo(name="input", shape=[-1, 3, 8, 8]),
        outputs=[TensorInfo(name="logits", shape=[-1, 2])],
        preprocessing=Preprocessing(resize=8, crop=8),
        models=[ModelFile(format="onnx", precision="fp32", path="model.onnx")],
    )
    base.update(kw)
    return Manifest(**base)


def _write(tmp_path):
    def writer(d):
        (d / "model.onnx").write_bytes(b"not really onnx")
        (d / "sub").mkdir()
        (d / "sub" / "x.bin").write_bytes(b"\x00" * 10)

    return write_artifact(tmp_path / "art", _manifest(), writer)


def test_round_trip_hashes_every_file(tmp_path):
    m = _write(tmp_path)
    assert set(m.files) == {"model.onnx", "sub/x.bin"}
    loaded = load_manifest(tmp_path / "art")
    assert loaded.files == m.files
    assert loaded.model("onnx").path == "model.onnx"


def test_tampered_missing_and_extra_files_are_refused(tmp_path):
    _write(tmp_path)
    art = tmp_path / "art"
    (art / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="model.onnx: sha256 mismatch"):
        load_manifest(art)
    load_manifest(art, verify=False)  # explicit opt-out still reads
    (art / "sub" / "x.bin").unlink()
    (art / "intruder.txt").write_text("x")
    with pytest.raises(IntegrityError) as exc:
        load_manifest(art)
    assert "sub/x.bin: missing" in str(exc.value) and "intruder.txt: not listed" in str(exc.value)


def test_failed_write_leaves_nothing_that_loads(tmp_path):
    def writer(d):
        (d / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    with pytest.raises(RuntimeError):
        write_artifact(tmp_path / "art", _manifest(), writer)
    assert not (tmp_path / "art").exists()
    assert [p for p in tmp_path.iterdir()] == []  # temp dir cleaned up


def test_failed_overwrite_keeps_the_old_artifact(tmp_path):
    _write(tmp_path)

    def writer(d):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_artifact(tmp_path / "art", _manifest(), writer)
    assert load_manifest(tmp_path / "art").name == "m"


def test_manifest_listing_a_missing_model_is_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="model.onnx"):
        write_artifact(tmp_path / "art", _manifest(), lambda d: None)


def test_missing_dir_manifest_and_newer_format(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    _write(tmp_path)
    data = json.loads((tmp_path / "art" / "manifest.json").read_text())
    data["format_version"] = 99
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="upgrade edgeslim"):
        load_manifest(tmp_path / "art")


def test_format_1_manifest_keeps_the_rule_its_thresholds_were_calibrated_for(tmp_path):
    _write(tmp_path)
    assert load_manifest(tmp_path / "art").decision_rule == "threshold"  # what edgeslim writes now
    data = json.loads((tmp_path / "art" / "manifest.json").read_text())
    data["format_version"] = 1
    del data["decision_rule"]
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path / "art").decision_rule == "argmax_or_threshold"


def test_model_lookup_error_lists_what_exists():
    m = _manifest()
    with pytest.raises(ArtifactError, match=r"no openvino model \(it has: onnx/fp32\)"):
        m.model("openvino")


def test_atomic_json_and_directory(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("1")
        assert not (tmp_path / "d").exists()
    assert (tmp_path / "d" / "f").read_text() == "1"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_atomic_directory_swaps_an_existing_one_and_sweeps_what_a_killed_writer_left(tmp_path):
    import subprocess

    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("old")
    # a writer SIGKILLed mid-write leaves its temp dir (and, between its two renames, the moved-aside old one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for leftover in (f".d.{pid}.abc123.partial", f".d.old-{pid}", f".d.{os.getpid()}.live.partial"):
        (tmp_path / leftover).mkdir()
    (tmp_path / ".dx.1.partial").mkdir()  # another artifact's name: not ours to touch
    seen = []
    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("new")
        seen = sorted(os.listdir(tmp_path))
    assert (tmp_path / "d" / "f").read_text() == "new"
    assert f".d.{pid}.abc123.partial" not in seen and f".d.old-{pid}" not in seen  # the dead writer's, swept
    left = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    assert left == [f".d.{os.getpid()}.live.partial", ".dx.1.partial"]  # a live writer's and another name's stay


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2(RENAME_EXCHANGE) is Linux-only (elsewhere: 2 renames)")
def test_the_old_directory_is_exchanged_in_one_step_on_linux(tmp_path):
    from edgeslim import _io

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("b")
    assert _io._exchange(tmp_path / "a", tmp_path / "b")  # the final path never stops existing
    assert (tmp_path / "a" / "f").read_text() == "b" and (tmp_path / "b" / "f").read_text() == "a"
