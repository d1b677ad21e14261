"""How a stored continuation joins its prompt in training text.

Continuations are stored trimmed, as people read them. Models see ``prompt + completion_text(c)``:
one leading space, as a GPT-2-style tokenizer writes the text that follows a sentence. The pairs export,
the reward trainer and PPO all use this, so the text a reward model is trained on and the text it later
scores are built the same way (see trainer/reward_format.py for the EOS).
"""


def completion_text(continuation: str) -> str:
    return " " + continuation.strip()
