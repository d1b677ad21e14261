"""PPO step throughput: rollouts/s, tokens/s and peak memory for a policy size and device.

    python benchmarks/ppo_throughput.py --size tiny demo            # CPU
    python benchmarks/ppo_throughput.py --size gpt2-small --device cuda

Sizes are GPT-2 shapes with random weights (throughput does not depend on what the weights say):
tiny = 2 layers x 64 dims (the tests), demo = the bootstrap demo preset (4 x 128), gpt2-small = 12 x 768
(124M parameters, GPT-2 small). The reward and value models have the same shape as the policy.
Random weights sample EOS about once in `vocab` tokens, so responses run nearly to max_new_tokens;
tokens/s counts the response tokens actually generated.
"""

import argparse
import resource
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

from trainer.ppo import PPOConfig, PPOTrainer

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "demo": dict(n_layer=4, n_embd=128, n_head=4, vocab=8192),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257),
}


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `vocab` made-up words (w0, w1, ...) plus EOS and pad."""
    words = {"<|endoftext|>": 0, "<pad>": 1, **{f"w{i}": i + 2 for i in range(vocab - 2)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")


def build(size: str, device: str):
    shape = SIZES[size]
    tokenizer = word_tokenizer(shape["vocab"])
    config = GPT2Config(vocab_size=shape["vocab"], n_positions=256, n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                        n_head=shape["n_head"], eos_token_id=0, bos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(config)
    reward = GPT2ForSequenceClassification(GPT2Config.from_dict({**config.to_dict(), "num_labels": 1}))
    return policy.to(device), reward.to(device), tokenizer


def measure(size: str, device: str, batch_size: int, new_tokens: int, steps: int) -> dict:
    policy, reward, tokenizer = build(size, device)
    cfg = PPOConfig(batch_size=batch_size, mini_batch_size=max(1, batch_size // 2), max_new_tokens=new_tokens,
                    ppo_epochs=4, forward_batch_size=batch_size, reward_batch_size=batch_size)
    trainer = PPOTrainer(cfg, policy, tokenizer, reward)
    prompts = [" ".join(f"w{(i * 7 + j) % 300 + 2}" for j in range(16)) for i in range(batch_size)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.step(prompts)  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    t0, tokens = time.perf_counter(), 0
    for _ in range(steps):
        stats = trainer.step(prompts)
        tokens += stats["response_length"] * batch_size
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    params = sum(p.numel() for p in policy.parameters())
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "params_M": params / 1e6, "device": device, "batch": batch_size, "new_tokens": new_tokens,
            "s_per_step": elapsed / steps, "rollouts_per_s": batch_size * steps / elapsed, "tokens_per_s": tokens / elapsed,
            "peak_MiB": peak, "peak_kind": "GPU allocated" if device == "cuda" else "process RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["tiny", "demo"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'size':11s} {'params':>8s} {'device':6s} {'batch':>5s} {'tokens':>6s} {'s/step':>8s} {'rollouts/s':>10s} "
          f"{'tokens/s':>9s} {'peak MiB':>9s}")
    for size in args.size:
        r = measure(size, args.device, args.batch_size, args.new_tokens, args.steps)
        print(f"{r['size']:11s} {r['params_M']:7.1f}M {r['device']:6s} {r['batch']:5d} {r['new_tokens']:6d} "
              f"{r['s_per_step']:8.3f} {r['rollouts_per_s']:10.1f} {r['tokens_per_s']:9.0f} {r['peak_MiB']:9.0f} ({r['peak_kind']})")


if __name__ == "__main__":
    main()
