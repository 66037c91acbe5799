"""The model registry: versions of named models with lineage (data, job, MLflow run) and a stage."""
