"""Orchestration and lifecycle: stage functions, the Prefect flow, the CLI, MLflow tracking and the registry."""
