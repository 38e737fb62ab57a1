"""The worker process: workflows, activities and the batch anchorer."""
