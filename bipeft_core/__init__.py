"""bipeft: budget-guided search for parameter-efficient fine-tuning structures."""
