"""storyloop: human judgements of machine-written stories, and the RLHF loop on them."""
