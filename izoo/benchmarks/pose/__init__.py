"""OmniObject3D-INR pose regression: given an archived NeRF and a view of it, regress the 6-DoF camera pose.

Model (the paper's Fig. 4): the NeRF is queried on a 32³ grid (RGB + density) by a 3D tokenizer (uniform volumes,
LC or LP, as the 2D tokenizers), each ``4³`` volume becomes one token by a 3D convolution (kernel = stride = 4 →
512 tokens), a ViT volume encoder (12 layers, 3 heads, 192; MAE-pretrainable) encodes them, the view becomes 2D
patch tokens, and a fusion transformer over ``[pose token, volume tokens, image tokens]`` feeds a head that outputs
the rotation in the continuous 6D representation (Zhou et al. 2019) and the translation of the world-to-camera
transform (where the object's centre sits in the camera frame). That translation is nearly constant for look-at
cameras, so the camera centre ``c = −R t`` follows the predicted rotation and stays at the right distance: a
regressed centre instead collapses towards the mean of the cameras (the object's inside) when views are ambiguous,
where a frozen-NeRF refinement gets no gradient.

Data: each training pair is (scene NeRF, a view rendered from that NeRF at a sampled pose, the pose). Poses follow
the dataset's cameras: look-at-origin cameras at the radius and within the elevation range of the poses stored with
the scene (``extras``), or the settings' defaults when the archive stores none. Split (documented in the results):
kept scenes are split per class into *seen* (training) scenes and *unseen* (held-out) scenes, ``unseen_fraction``
of each class with at least 2 scenes, chosen by the seed; *seen* evaluation = new poses (a different random stream,
or the scene's stored held-out poses) of training scenes, *unseen* evaluation = the same for held-out scenes.

Metrics: translation error = L2 distance of camera centres (scene units × 100, "cm" when a unit is a metre;
``te_cam`` = the same for the world-to-camera translation),
rotation error = geodesic angle of ``R_predᵀ R_gt`` in degrees, RE@5/15/30 = % of views under each threshold;
optionally after iNeRF-style refinement (``izoo.benchmarks.pose.refine``). Every result also carries a
``reference``: the errors of one constant pose (chosen on the training poses, ``constant_pose``) predicted for
every evaluation view, which is what a regressor that learned nothing scores.

Variants (the paper's Table 5 columns, ``izoo.benchmarks.pose.variants``): ``plain``, ``pretrain`` (MAE pre-trained
volume encoder, "+Pre"), and each refined ("+Ref"); the table gives every variant its own row.

Modules: ``settings`` (PoseSettings, tokenizer names), ``geometry`` (rotations, pose errors), ``model`` (3D
tokenizer, regressor, volume MAE), ``data`` (scene cameras, rendered view banks, kept scenes, the split),
``refine`` (iNeRF), ``train`` (one run → its result record), ``table`` (Table 5), ``variants`` (training jobs).
"""
