"""medens: entropy-guided masked-autoencoder pre-training and ImageNet/MAE ensembles for medical images.

Subpackages are imported on demand, so ``import medens`` stays cheap:

- :mod:`medens.ops`      patch entropy, entropy-guided masking, patch gathering (C++/CUDA/Triton kernels + reference)
- :mod:`medens.data`     datasets in their published layouts, splits, transforms, decode cache
- :mod:`medens.models`   masked ConvNeXt autoencoder and classifiers
- :mod:`medens.engine`   the training loop shared by pre-training and fine-tuning
- :mod:`medens.evaluate` metrics, the ensemble, plots and reports
- :mod:`medens.train`    the command line, ``python -m medens.train``
"""

__version__ = "0.1.0"
