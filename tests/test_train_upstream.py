"""Checkpoint interoperability with upstream OpenS2S (CASIA-LM/OpenS2S): a tiny model laid out exactly as
upstream's `OmniSpeechModel` names its modules, saved as its `save_pretrained` + `train.py` would, loads
through `--init-from` with forward outputs identical to the same weights copied module by module, saves
back to upstream's keys and shapes, and a renamed key is refused by name."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.train.config import ConfigError, tiny_config
from pipeline.train.data import Collator, ParquetDialogues
from pipeline.train.model import build_model
from pipeline.train.tokenizer import HFTokenizer
from pipeline.train.tokens import AUDIO_END, AUDIO_START, AUDIO_TOKEN_INDEX, TTS_END, TTS_START
from pipeline.train.upstream import load_opens2s, read_config, read_weights, save_opens2s

torch.set_num_threads(1)
N_UNITS = 64
UPSTREAM_TOKENS = [AUDIO_START, AUDIO_END, TTS_START, TTS_END]  # upstream train.py's order


def _qwen_like_tokenizer(folder: Path, upstream_tokens: bool = True) -> int:
    """A byte-level BPE tokenizer with Qwen3's chat specials; returns its size before upstream's 4 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<think>", "</think>"]})
    before = len(tok)
    if upstream_tokens:
        tok.add_special_tokens({"additional_special_tokens": UPSTREAM_TOKENS})  # what upstream's train.py does
    tok.save_pretrained(str(folder))
    return before


def _tts_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|endoftext|>": 1} | {f"<|audio_{i}|>": 2 + i for i in range(N_UNITS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    GenerationConfig(eos_token_id=1, pad_token_id=1).save_pretrained(str(folder))


# --- upstream's module tree (src/modeling_omnispeech.py, modeling_adapter.py, modeling_tts_lm.py), names only ---
class _UpstreamTTS(nn.Module):
    def __init__(self, config: object) -> None:
        from transformers import Qwen3ForCausalLM

        super().__init__()
        lm = Qwen3ForCausalLM(config)
        self.model, self.lm_head = lm.model, lm.lm_head
        self.spk2tts = nn.Linear(512, config.hidden_size, bias=False)
        self.spk_ln = nn.LayerNorm(config.hidden_size, 1e-5, True)


class _ConvSubsampler(nn.Module):
    def __init__(self, d: int, out: int) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList([nn.Conv1d(d, 2 * d, 5, 2, 2), nn.Conv1d(d, 2 * out, 5, 2, 2)])


class _Subsampler(nn.Module):
    def __init__(self, d: int, inner: int, out: int) -> None:
        super().__init__()
        self.subsampler = _ConvSubsampler(d, out)
        self.fc1, self.fc2 = nn.Linear(out, inner, bias=False), nn.Linear(inner, out, bias=False)
        self.ln = nn.LayerNorm(out, 1e-5, True)


class _OmniSpeech(nn.Module):
    def __init__(self, enc: object, llm: object, tts: object, inner: int) -> None:
        from transformers import Qwen2AudioEncoder, Qwen3ForCausalLM

        super().__init__()
        self.audio_encoder_model = Qwen2AudioEncoder(enc)
        self.llm_model = Qwen3ForCausalLM(llm)
        self.tts_lm_model = _UpstreamTTS(tts)
        self.audio_adapter = _Subsampler(enc.d_model, inner, llm.hidden_size)
        self.llm2tts = nn.Linear(llm.hidden_size, tts.hidden_size, bias=False)
        self.llm_ln = nn.LayerNorm(tts.hidden_size, 1e-5, True)


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _OmniSpeech, int]:
    from transformers import Qwen2AudioEncoderConfig, Qwen3Config, WhisperFeatureExtractor

    folder = tmp_path_factory.mktemp("opens2s")
    base_vocab = _qwen_like_tokenizer(folder)
    _tts_tokenizer(folder / "tts")
    tiny = tiny_config()
    enc = Qwen2AudioEncoderConfig(**tiny.encoder)
    llm = Qwen3Config(**{**tiny.llm, "vocab_size": base_vocab + 4, "tie_word_embeddings": False})  # like Qwen3-8B
    tts = Qwen3Config(**{**tiny.tts, "vocab_size": N_UNITS + 2})  # tied, like a small Qwen3
    torch.manual_seed(7)
    replica = _OmniSpeech(enc, llm, tts, inner=128)
    with torch.no_grad():
        for p in replica.parameters():
            p.normal_(0.0, 0.05)  # norms and biases too, so that a swapped pair would show
    state = {k: v.contiguous() for k, v in replica.state_dict().items() if k != "tts_lm_model.lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})  # tied head: not stored
    config = {
        "architectures": ["OmniSpeechModel"],
        "audio_encoder_config": {**enc.to_dict(), "model_type": "qwen2_audio_encoder"},
        "llm_config": llm.to_dict(),
        "tts_lm_config": tts.to_dict(),
        "lora_config": None,
        "conv_kernel_sizes": "5,5",
        "adapter_inner_dim": 128,
        "interleave_strategy": "1:2",
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
    }
    (folder / "config.json").write_text(json.dumps(config))
    WhisperFeatureExtractor(feature_size=80, chunk_length=10).save_pretrained(str(folder / "audio"))
    return folder, replica, base_vocab


def _native_copy(replica: _OmniSpeech, folder: Path) -> nn.Module:
    """The same weights put into our model module by module (independent of the key map)."""
    model = build_model(read_config(folder), seed=1)
    model.audio_encoder.load_state_dict(replica.audio_encoder_model.state_dict())
    model.llm.load_state_dict(replica.llm_model.state_dict())
    tts = replica.tts_lm_model
    model.tts.model.load_state_dict(tts.model.state_dict())
    for ours, theirs in (
        (model.adapter.convs[0], replica.audio_adapter.subsampler.conv_layers[0]),
        (model.adapter.convs[1], replica.audio_adapter.subsampler.conv_layers[1]),
        (model.adapter.fc1, replica.audio_adapter.fc1),
        (model.adapter.fc2, replica.audio_adapter.fc2),
        (model.adapter.norm, replica.audio_adapter.ln),
        (model.llm2tts.linear, replica.llm2tts),
        (model.llm2tts.norm, replica.llm_ln),
        (model.spk2tts.linear, tts.spk2tts),
        (model.spk2tts.norm, tts.spk_ln),
    ):
        ours.load_state_dict(theirs.state_dict())
    return model.eval()


def test_upstream_checkpoint_loads_exactly_saves_back_and_refuses_a_renamed_key(
    built: tuple[Path, subprocess.CompletedProcess[str]], upstream_dir: tuple[Path, _OmniSpeech, int], tmp_path: Path
) -> None:
    out_dir, _ = built
    folder, replica, base_vocab = upstream_dir
    model, tok = load_opens2s(folder)
    model.eval()
    # upstream's token ids: its four added tokens in its order, right after the base vocabulary; audio is -200
    assert [tok.token_id(t) for t in UPSTREAM_TOKENS] == list(range(base_vocab, base_vocab + 4))
    assert tok.vocab_size == base_vocab + 4
    assert (model.config.unit_offset, model.config.unit_eos, model.config.n_units) == (2, 1, N_UNITS)
    examples = list(ParquetDialogues(out_dir, tok, model.config, epochs=1))
    assert examples and all(AUDIO_TOKEN_INDEX in e.input_ids for e in examples)
    batch = Collator(model.config, tok.pad_id)(examples[:2])

    native = _native_copy(replica, folder)
    with torch.no_grad():
        a, b = model(batch), native(batch)
    assert a.unit_count > 0 and a.text_count > 0
    assert torch.equal(a.text_sum, b.text_sum) and torch.equal(a.unit_sum, b.unit_sum)
    assert all(torch.equal(v, native.state_dict()[k]) for k, v in model.state_dict().items())

    # saving back: upstream's keys, shapes and values (sharded here to exercise the index), and it reloads
    back = tmp_path / "back"
    files = save_opens2s(model.state_dict(), model.config, tok, back, max_shard_bytes=200_000)
    assert len(files) > 1 and (back / "model.safetensors.index.json").is_file()
    written, original = read_weights(back), load_file(str(folder / "model.safetensors"))
    assert set(written) == set(original)
    assert all(written[k].shape == original[k].shape and torch.equal(written[k], original[k]) for k in original)
    saved_config = json.loads((back / "config.json").read_text())
    assert saved_config["interleave_strategy"] == "1:2" and saved_config["conv_kernel_sizes"] == "5,5"
    assert saved_config["llm_config"]["vocab_size"] == base_vocab + 4
    for name in ("tokenizer_config.json", "generation_config.json", "audio/preprocessor_config.json",
                 "tts/tokenizer_config.json", "tts/generation_config.json"):  # fmt: skip
        assert (back / name).is_file(), name
    again, _ = load_opens2s(back)
    with torch.no_grad():
        c = again.eval()(batch)
    assert torch.equal(c.text_sum, a.text_sum) and torch.equal(c.unit_sum, a.unit_sum)

    # one renamed key: refused, naming the key it lacks and the key it does not know
    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    state = load_file(str(renamed / "model.safetensors"))
    state["audio_adapter.fc_1.weight"] = state.pop("audio_adapter.fc1.weight")
    save_file(state, str(renamed / "model.safetensors"))
    with pytest.raises(ConfigError) as err:
        load_opens2s(renamed)
    assert "missing keys: audio_adapter.fc1.weight" in str(err.value)
    assert "unexpected keys: audio_adapter.fc_1.weight" in str(err.value)


def test_plain_qwen_tokenizer_gets_upstreams_four_tokens_in_order(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    base = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>")
    base.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|endoftext|>", "<think>", "</think>"]})
    base.save_pretrained(str(tmp_path))
    tok = HFTokenizer(tmp_path)
    assert [tok.token_id(t) for t in UPSTREAM_TOKENS] == list(range(len(base), len(base) + 4))
    with pytest.raises(ConfigError, match=re.escape("lacks <|im_audio_start|>")):
        HFTokenizer(tmp_path, require_specials=True)


def test_cli_trains_from_an_upstream_checkpoint_and_writes_upstreams_layout(
    built: tuple[Path, subprocess.CompletedProcess[str]], upstream_dir: tuple[Path, _OmniSpeech, int], tmp_path: Path
) -> None:
    out_dir, _ = built
    folder, _, _ = upstream_dir
    args = ["--init-from", str(folder), "--steps", "2", "--log-every", "1", "--save-opens2s", str(tmp_path / "up")]
    ok = run_cli("train", str(out_dir), "--out", str(tmp_path / "ck"), *args)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "step      2" in ok.stderr
    written, original = read_weights(tmp_path / "up"), load_file(str(folder / "model.safetensors"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in original.items()}
    changed = [k for k in original if not torch.equal(written[k], original[k])]
    assert any(k.startswith("llm_model.") for k in changed) and any(k.startswith("audio_adapter.") for k in changed)
    assert not any(k.startswith("audio_encoder_model.") for k in changed)  # frozen in both regimes


def test_three_checkpoint_folders_load_strictly_with_upstreams_vocab_resize(tmp_path: Path) -> None:
    from transformers import (
        Qwen2AudioEncoder,
        Qwen2AudioEncoderConfig,
        Qwen3Config,
        Qwen3ForCausalLM,
        WhisperFeatureExtractor,
    )

    from pipeline.train.config import opens2s_config

    tiny = tiny_config()
    llm_dir, tts_dir, audio_dir = tmp_path / "llm", tmp_path / "tts", tmp_path / "audio"
    base = _qwen_like_tokenizer(llm_dir, upstream_tokens=False)
    torch.manual_seed(3)
    llm = Qwen3ForCausalLM(Qwen3Config(**{**tiny.llm, "vocab_size": base + 10, "tie_word_embeddings": False}))
    llm.save_pretrained(str(llm_dir))  # like Qwen3: more embedding rows than tokens
    _tts_tokenizer(tts_dir)
    tts = Qwen3ForCausalLM(Qwen3Config(**{**tiny.tts, "vocab_size": N_UNITS + 2}))
    tts.config.save_pretrained(str(tts_dir))
    speaker = {"spk2tts.weight": torch.randn(tiny.tts["hidden_size"], 512), "spk_ln.weight": torch.rand(64),
               "spk_ln.bias": torch.rand(64)}  # fmt: skip
    tts_state = {k: v for k, v in tts.state_dict().items() if k != "lm_head.weight"} | speaker
    save_file(tts_state, str(tts_dir / "model.safetensors"))  # an upstream TTS LM carries spk2tts/spk_ln
    enc_cfg = Qwen2AudioEncoderConfig(**tiny.encoder)
    encoder = Qwen2AudioEncoder(enc_cfg)
    audio_dir.mkdir()
    (audio_dir / "config.json").write_text(json.dumps({"model_type": "qwen2_audio", "audio_config": enc_cfg.to_dict()}))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(audio_dir))
    audio_state = {f"audio_tower.{k}": v for k, v in encoder.state_dict().items()}
    save_file(audio_state | {"language_model.x": torch.zeros(1)}, str(audio_dir / "model.safetensors"))

    config = opens2s_config(str(audio_dir), str(llm_dir), str(tts_dir))
    assert config.llm["vocab_size"] == base + 4  # resized to the tokenizer with upstream's 4 tokens, as upstream
    model = build_model(config, pretrained=True)
    assert torch.equal(model.llm.model.embed_tokens.weight, llm.model.embed_tokens.weight[: base + 4])
    assert torch.equal(model.llm.lm_head.weight, llm.lm_head.weight[: base + 4])
    assert torch.equal(model.spk2tts.linear.weight, speaker["spk2tts.weight"])
    assert torch.equal(model.audio_encoder.layers[0].fc1.weight, encoder.layers[0].fc1.weight)
    save_file(tts_state | {"extra.weight": torch.zeros(1)}, str(tts_dir / "model.safetensors"))
    with pytest.raises(ConfigError, match="unexpected: extra.weight"):
        build_model(config, pretrained=True)
