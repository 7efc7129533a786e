"""How scanflow runs: prefect.yaml helpers, automations as code, the Lambda trigger, the
container image and work-pool templates."""
