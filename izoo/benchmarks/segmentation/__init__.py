"""Cityscapes-INR semantic segmentation: SegFormer-B0-size model over INR queries (the paper's Table 3).

Model = tokenizer → hierarchical encoder → all-MLP decoder:

* the tokenizer is ``izoo.benchmarks.tokenizers.CoordinateTokenizer`` (uniform, LC or LP+reg) with patch 4, the
  stride of the encoder's first stage: it queries the SIRENs at its (learnable) coordinates and lays the values out
  as a ``[B, 3, H, W]`` image whose 4×4 blocks are its tokens' pixel groups, so the encoder runs unchanged;
* the encoder is timm's ``pvt_v2_b0`` (same family as SegFormer's MiT-B0: overlapping patch embedding,
  spatial-reduction attention, Mix-FFN), ``features_only`` → 4 stages at strides 4/8/16/32, optionally initialised
  from a local checkpoint file, ``encoder_checkpoint`` (the paper fine-tunes an ImageNet-1K-pretrained MiT-B0;
  nothing is downloaded; without the file the encoder trains from scratch);
* the decoder is SegFormer's all-MLP head, written here because timm ships encoders only (no decode heads).

Training (SPEC §4): AdamW, lr 1e-4 (tokenizer 1e-5), polynomial decay with power 1, 40k steps, batch 16, cross
entropy with ignore label 255 (+ the non-close penalty for LP+reg), random horizontal flips done in weight space
(negating the x column of the first layer mirrors the INR exactly) and random resize-and-crop (zoom 1–2×, also
exact in weight space, SegFormer's recipe without its zoom-out). mIoU over the 19 train ids on fine labels
(``label_map``) and on coarse labels when the archive has ``label_map_coarse``. The paper does not say how its
coarse column was obtained; izoo evaluates the same model on the test split's coarse annotations (the
``train_extra`` split, coarse labels only, is fitted and archived as in the paper's 23,473-item dataset). Every
result also carries a ``reference``: the mIoU of predicting the train split's most frequent class everywhere.

Modules: ``settings`` (SegSettings, tokenizer names), ``model`` (encoder + all-MLP head, GFLOPs), ``transforms``
(flips and zoom-crops in weight space), ``metrics`` (IoU, mIoU), ``train`` (one run → its result record),
``table`` (Table 3).
"""
