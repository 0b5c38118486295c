"""Asset checks: thin wrappers over `finetune.gates`; blocking where a failure must stop promotion."""
