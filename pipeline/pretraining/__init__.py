"""Parts of the pretraining stage (pipeline.pretrain): its recipe."""
