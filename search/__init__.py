"""The search driver: space -> tuner -> mlflow -> report.

python -m search.run --space smoke          # see `python -m search.run --help`
"""
