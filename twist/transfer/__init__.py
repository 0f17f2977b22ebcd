"""Transfer in miniature: digit scenes and the pretrain -> convert -> trials pipeline on them."""
