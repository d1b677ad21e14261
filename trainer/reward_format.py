"""The one place that decides what text a reward model sees.

TRL's RewardTrainer (checked on trl 1.16, non-conversational data) builds each training example as
``prompt + completion`` and appends the tokenizer's EOS token when the text does not already end with
it, then tokenizes the result with ``tokenizer(text)`` (default special-token handling). A reward model
trained that way has learned to read its score off the EOS position, so everything that scores text
later (PPO rollouts, evaluation, the annotation service) must build the text the same way. Use this
function for the reward trainer's dataset too, so the three can never drift apart.
"""


def format_for_reward(prompt: str, completion: str, eos_token: str) -> str:
    """Return ``prompt + completion`` followed by exactly one ``eos_token`` (as TRL's RewardTrainer does).

    The prompt and completion are joined verbatim: the completion carries its own leading space when it
    needs one (a byte-level BPE tokenizer decodes a continuation as " the cat ...").
    """
    if not eos_token:
        raise ValueError("the reward tokenizer has no EOS token; set one before scoring")
    text = prompt + completion
    return text if text.endswith(eos_token) else text + eos_token
