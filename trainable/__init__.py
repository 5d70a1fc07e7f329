"""One trial of soft-prompt tuning: model -> data -> train -> generate -> sandbox -> score.

Nothing here imports Ray or `search`; the Ray trial in `search/` is a thin wrapper around
`trainable.trial.Trial`.
"""
