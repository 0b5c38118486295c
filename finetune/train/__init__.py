"""Training: PEFT fine-tuning of the base model on the SFT splits."""
