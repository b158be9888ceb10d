"""The proving ground: a synthetic medical task on which a small policy can measurably learn.

- :mod:`~medsss.proving_ground.knowledge`: the seeded knowledge base (fictional drugs, prodrugs,
  classes, mechanisms, contraindications) and the step sentences that state its facts;
- :mod:`~medsss.proving_ground.task`: multiple-choice questions over it, their gold solutions, the
  train / held-out splits, and the JSONL files ``data=proving_ground`` reads;
- :mod:`~medsss.proving_ground.checker`: which steps of a free-text solution are wrong;
- :mod:`~medsss.proving_ground.pretrain`: the starting policy (``model=proving_ground``), pretrained
  on solutions with a controlled share of wrong steps;
- :mod:`~medsss.proving_ground.measure`: step AUROC and paired differences from evaluation caches;
- :mod:`~medsss.proving_ground.experiment`: the whole experiment, its table and plot.
"""
