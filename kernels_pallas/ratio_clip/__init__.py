from kernels_pallas.ratio_clip.ops import ratio_clip_loss
