"""`python -m mlflow_server`: a lean MLflow tracking server (sqlite/Postgres, proxied artifacts,
optional basic-auth) supervised in a child process group. See ``mlflow_server.__main__``."""
