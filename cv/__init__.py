"""Computer vision for scanflow: pure functions from arrays and files to arrays and dataclasses.

Nothing here imports Prefect, boto3, httpx or reads the environment (a test checks it).
"""
