"""Parts of the SFT stage (pipeline.sft): its recipe, its data checks, its samples."""
