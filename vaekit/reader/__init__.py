"""The defect reader: a small segmentation network trained on vaekit's own synthetic defects
(DRAEM-style, Zavrtanik et al. 2021) that turns an image, and optionally the VAE's per-pixel
outputs, into a defect probability per pixel and a score per image.

    synth.make_defects    synthetic defects and their masks (numpy)
    net.ReaderConfig      the network and its training recipe; net.ReaderNet the U-Net;
                          net.ReaderEnsemble several U-Nets read as their median (a run's reader)
    features              the VAE's per-pixel outputs as reader inputs; tiling for large images
    train.train_reader    train on normal crops -> state_dict; train.load_reader; train.read
    score                 logits -> pixel maps and image scores, numpy only (for an ONNX engine too)

torch is imported by the submodules that need it (not synth, score, or this file).
"""
