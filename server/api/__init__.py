"""Protocol adapters: each turns its wire requests into a GenerationPlan and the pipeline's ReplyEvents back into
its own responses."""
