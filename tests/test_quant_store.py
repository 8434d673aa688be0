"""`speechrs quantize MODEL -o DIR` (quant_store.py, quantize_checkpoint.py): a directory that loads to exactly
the model a load with --quantize makes, from every layout, for both kinds; and clear errors for what cannot be."""

import json

import pytest
import torch
from typer.testing import CliRunner

import speechrs
from speechrs.cli.main import app
from speechrs.dia.checkpoint import load_dia
from speechrs.errors import UnsupportedModelError
from speechrs.linear import quant, quant_store
from speechrs.linear.quant import Int4Linear, Int8Linear, StoredInt4, StoredInt8
from speechrs.linear.quant_store import MANIFEST
from speechrs.voxtral.checkpoint import load_voxtral


def _assert_same_model(stored: torch.nn.Module, at_load: torch.nn.Module) -> None:
    """Same modules, same tensors bit for bit (so the same forward); every quantized Linear read from codes."""
    assert [type(m) for m in stored.modules()] == [type(m) for m in at_load.modules()]
    ours, theirs = stored.state_dict(), at_load.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype and torch.equal(tensor, theirs[name]), name
    quantized = [m for m in stored.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    assert quantized and not any(m.quantized_at_load for m in quantized)
    assert not any(isinstance(m, (StoredInt8, StoredInt4)) for m in stored.modules())


@pytest.mark.parametrize(("layout", "kind"), [("native", "int8"), ("hf", "int4")])
def test_a_quantized_voxtral_directory_loads_what_quantizing_at_load_makes(voxtral_dirs, tmp_path, layout, kind):
    source = voxtral_dirs[0] if layout == "native" else voxtral_dirs[1]
    done = speechrs.quantize(str(source), tmp_path / "q", kind)
    assert done.family == "voxtral" and done.layout == layout and [f.name for f in done.files] == [quant_store.WEIGHTS]
    assert json.loads((tmp_path / "q" / MANIFEST).read_text())["quantize"] == kind
    assert (tmp_path / "q" / "tekken.json").exists() and not (tmp_path / "q" / "consolidated.safetensors").exists()
    at_load = load_voxtral(source, layout, torch.float32, quantize=kind)
    _assert_same_model(load_voxtral(tmp_path / "q", layout, torch.float32), at_load)


def test_a_format_1_directory_still_loads_with_its_encoder_quantized_at_load(native_dir, tmp_path):
    """Format 1 stored the decoder's codes only (the audio encoder stayed float then): such a directory loads,
    its encoder quantized at load, to what quantizing at load makes."""
    from speechrs.voxtral.checkpoint import canonical_tensors
    from speechrs.voxtral.model import Voxtral

    _, tensors = canonical_tensors(native_dir, "native", [])
    decoder_only = lambda n: "int4" if Voxtral.QUANTIZED.fullmatch(n) else None  # noqa: E731
    quant_store.write_quantized(native_dir, tensors, decoder_only, "int4", tmp_path / "q", {})
    manifest = tmp_path / "q" / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 1}))
    old = load_voxtral(tmp_path / "q", "native", torch.float32)
    at_load = load_voxtral(native_dir, "native", torch.float32, quantize="int4")
    assert old.state_dict().keys() == at_load.state_dict().keys()
    assert all(torch.equal(t, at_load.state_dict()[n]) for n, t in old.state_dict().items())
    fresh = {n for n, m in old.named_modules() if getattr(m, "quantized_at_load", False)}
    assert fresh and all(n.startswith("mm_whisper_embeddings.") for n in fresh)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 2}))  # format 2 must hold them
    with pytest.raises(UnsupportedModelError, match="do not match"):
        load_voxtral(tmp_path / "q", "native", torch.float32)


def test_a_format_2_dia_directory_still_loads_with_its_text_encoder_quantized_at_load(dia_dirs, tmp_path):
    """Format 2 stored Dia's decoder codes only (the text encoder stayed float then): such a directory loads, its
    encoder quantized at load, to what quantizing at load makes; format 3 must hold the encoder's codes."""
    from speechrs.dia.checkpoint import canonical_tensors
    from speechrs.dia.config import DiaConfig
    from speechrs.dia.model import Dia

    cfg = DiaConfig.load(dia_dirs[1] / "config.json")
    decoder_only = lambda n: "int8" if Dia.QUANTIZED.fullmatch(n) else None  # noqa: E731
    quant_store.write_quantized(
        dia_dirs[1], canonical_tensors(dia_dirs[1], cfg, []), decoder_only, "int8", tmp_path / "q", {}
    )
    manifest = tmp_path / "q" / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 2}))
    old = load_dia(tmp_path / "q", None)
    at_load = load_dia(dia_dirs[1], None, quantize="int8")
    assert old.state_dict().keys() == at_load.state_dict().keys()
    assert all(torch.equal(t, at_load.state_dict()[n]) for n, t in old.state_dict().items())
    fresh = {n for n, m in old.named_modules() if getattr(m, "quantized_at_load", False)}
    assert len(fresh) == 4 * cfg.enc_layers and all(n.startswith("encoder.") for n in fresh)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 3}))
    with pytest.raises(UnsupportedModelError, match="do not match"):
        load_dia(tmp_path / "q", None)


@pytest.mark.parametrize(("which", "kind"), [(0, "int4"), (1, "int8")])
def test_a_quantized_dia_directory_loads_what_quantizing_at_load_makes(dia_dirs, tmp_path, which, kind):
    done = speechrs.quantize(str(dia_dirs[which]), tmp_path / "q", kind)
    assert done.family == "dia"
    _assert_same_model(load_dia(tmp_path / "q", None), load_dia(dia_dirs[which], None, quantize=kind))


def test_shards_and_the_smaller_file(native_dir, tmp_path, monkeypatch):
    """Shards once a shard passes SHARD_BYTES, with an index; int8 codes take about half of the float32 decoder."""
    monkeypatch.setattr(quant_store, "SHARD_BYTES", 2**20)
    done = speechrs.quantize(str(native_dir), tmp_path / "q", "int8")
    assert len(done.files) >= 2 and (tmp_path / "q" / quant_store.INDEX).exists()
    assert done.bytes < (native_dir / "consolidated.safetensors").stat().st_size
    at_load = load_voxtral(native_dir, "native", None, quantize="int8")
    _assert_same_model(load_voxtral(tmp_path / "q", "native", None), at_load)


def test_the_cli_writes_and_the_api_loads_it_and_says_so(native_dir, dia_dirs, dac_dirs, tmp_path, clip):
    runner = CliRunner()
    out = tmp_path / "vox-int4"
    result = runner.invoke(app, ["quantize", str(native_dir), "-o", str(out), "--quantize", "int4"])
    assert result.exit_code == 0, result.output
    assert f"load it with -m {out}" in result.stderr and "int4" in result.stderr
    model = speechrs.load(str(out))
    assert "int4 weight-only" in model.plan.summary and model.transcribe(str(clip), max_tokens=4).text is not None
    assert speechrs.load(str(out), quantize="int4").plan.quantize == "int4"
    with pytest.raises(speechrs.errors.InvalidRequestError, match="holds int4 weights.*--quantize int4 or none"):
        speechrs.load(str(out), quantize="int8")
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(out), "--quantize", "int8"])
    assert result.exit_code != 0 and "holds int4 weights" in result.stderr and "Traceback" not in result.output
    dia_out = tmp_path / "dia-int8"
    assert runner.invoke(app, ["quantize", str(dia_dirs[1]), "-o", str(dia_out)]).exit_code == 0  # int8 default
    dia = speechrs.load(str(dia_out), dac=str(dac_dirs[1]))
    assert dia.plan.quantize == "int8" and len(dia.speak("[S1] Hi.", max_tokens=32, seed=0).pcm) > 0


def test_what_cannot_be_done_is_said(native_dir, tmp_path):
    runner = CliRunner()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["quantize", str(native_dir), "-o", str(busy)])
    assert result.exit_code == 1 and "is not empty" in result.stderr and (busy / "keep.txt").read_text() == "mine"
    assert "half way" not in result.stderr
    (busy / "speechrs-quantized-00001.safetensors").write_bytes(b"")  # what an interrupted write leaves
    result = runner.invoke(app, ["quantize", str(native_dir), "-o", str(busy)])
    assert result.exit_code == 1 and "stopped half way left it: remove it" in result.stderr
    result = runner.invoke(app, ["quantize", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "error:" in result.stderr and "Traceback" not in result.output
    speechrs.quantize(str(native_dir), tmp_path / "q", "int8")
    with pytest.raises(ValueError, match="already quantized"):
        speechrs.quantize(str(tmp_path / "q"), tmp_path / "qq", "int8")
    with pytest.raises(ValueError, match="needs --quantize int8 or int4"):
        speechrs.quantize(str(native_dir), tmp_path / "none", "none")
    (tmp_path / "q" / MANIFEST).write_text(json.dumps({"format": 99, "quantize": "int8"}))
    with pytest.raises(UnsupportedModelError, match="format 99"):
        load_voxtral(tmp_path / "q", "native", None)


def test_a_directory_whose_codes_do_not_match_the_model_is_refused(native_dir, tmp_path):
    """Codes missing for one Linear (it would be quantized again at load from a float weight the directory
    lacks), or codes for a weight the model keeps in float (here the token embeddings)."""
    from speechrs.voxtral.checkpoint import canonical_tensors
    from speechrs.voxtral.model import Voxtral

    _, tensors = canonical_tensors(native_dir, "native", [])
    only_some = lambda n: None if n == "layers.0.attention.wo" else Voxtral.quantized_kind(n, "int8")  # noqa: E731
    quant_store.write_quantized(native_dir, tensors, only_some, "int8", tmp_path / "q", {})
    with pytest.raises(UnsupportedModelError, match="do not match"):
        load_voxtral(tmp_path / "q", "native", None)
    _, tensors = canonical_tensors(native_dir, "native", [])
    table_too = lambda n: "int8" if n == "tok_embeddings" else Voxtral.quantized_kind(n, "int8")  # noqa: E731
    quant_store.write_quantized(native_dir, tensors, table_too, "int8", tmp_path / "q2", {})
    with pytest.raises(UnsupportedModelError, match="tok_embeddings, which this model does not quantize"):
        load_voxtral(tmp_path / "q2", "native", None)


def test_int8_codes_at_any_offset_of_a_file_are_safe_for_the_kernel():
    """A stored Linear's codes are a view of the memory-mapped file at whatever offset safetensors gave them; the
    AVX-512 kernel's aligned loads crashed on such a view from 4 rows (seen on Dia's o_proj at offset 24)."""
    qweight, scale = quant.int8_codes(torch.randn(64, 256, generator=torch.Generator().manual_seed(0)))
    buffer = torch.zeros(64 * 256 + 24, dtype=torch.int8)
    view = buffer[24:].view(64, 256)
    view.copy_(qweight)
    x = torch.randn(16, 256)
    assert torch.equal(Int8Linear(view, scale)(x), Int8Linear(qweight, scale)(x))
