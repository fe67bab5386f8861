"""``python -m medens.train``: the command line of medens.

Subcommands (each a module with ``add_parser(subparsers)`` and ``main(args) -> int``):

- ``pretrain``  entropy-guided masked-autoencoder pre-training (:mod:`medens.train.pretrain`)
- ``finetune``  fine-tune an ImageNet-, MAE- or randomly-initialised ConvNeXt (:mod:`medens.train.finetune`)
- ``ensemble``  combine fine-tuned members and compare them (:mod:`medens.train.ensemble`)
- ``predict``   predict with a fine-tuned model or an ensemble (:mod:`medens.train.predict`)
- ``pipeline``  the whole paper: pre-train, fine-tune both members, ensemble (:mod:`medens.train.pipeline`)
- ``study``     the pipeline over folds x seeds (x pre-training variants), resumable, with a report
  (:mod:`medens.train.study`)

Without arguments, ``python -m medens.train`` runs ``pipeline`` with its defaults (the demo).

Python entry points: ``medens.train.pretrain.run_pretrain(config)`` and ``medens.train.finetune.run_finetune(config)``
(each with ``default_config()`` and ``is_complete(out_dir)``). The dispatcher is
:func:`medens.train.__main__.main`.
"""
