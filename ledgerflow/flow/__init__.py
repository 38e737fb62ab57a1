"""The authoring API: checkpointed workflows, typed steps, sagas and human waits."""
