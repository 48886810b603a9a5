"""INR classification: query each INR through a (learnable) tokenizer and classify the tokens with a timm ViT.

One run = one (tokenizer, seed): ``run_classification(train, test, tokenizer, seed, settings)`` trains
on the train archive, evaluates on the test archive every epoch and returns a JSON-able result
(accuracy, macro precision, macro F1, history, learned token coordinates). ``izoo bench-classify`` wraps it.

Defaults are the paper's CIFAR-10 settings (ViT-tiny, patch 4, batch 512, 200 epochs, Adam 1e-4,
cosine, RandAugment N=2 M=9, LP+reg weight 1). The ImageNet-100 recipe (paper §5.2 and supplementary §7.3.1)
is ``model: vit_base``, ``patch: 16``, ``image_size: 224``, ``batch_size: 32``, ``steps: 8000``,
``optimizer: adamw``, ``lr: 1e-5`` (model and tokenizer), ``schedule: warmup_cosine`` with
``warmup_epochs: 1``, ``input_norm: inception`` (the augreg 21k→1k ViT-B expects mean = std = 0.5) and
``checkpoint: <local file>`` (never downloaded).

Every result also carries a ``reference`` entry: the metrics of a model that learns nothing (it predicts the
training split's most frequent class for every test item), computed on the same test split.

Modules: ``settings`` (ClassificationSettings and its choices), ``augment`` (differentiable RandAugment),
``data`` (archive splits), ``model`` (tokenizer → augmentation → timm ViT), ``train`` (one run → its result
record), ``table`` (Table 2 and the token figure).
"""
