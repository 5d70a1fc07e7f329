"""What every command line here shares, without the training stack (no torch): the one-line
usage error (`errors`) and the exit-code contract (`commands`). `spaces/`, `search/`,
`mlflow_server/` and `trainable/` all import it; it imports nothing of theirs."""
