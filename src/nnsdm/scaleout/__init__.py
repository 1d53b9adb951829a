"""Scaling out: a study's folds and a cohort's prediction as jobs, locally or on SLURM.

* :mod:`nnsdm.scaleout.study` turns ``train`` over several folds and SDM weights, or ``predict`` in
  shards, into job records on disk;
* :mod:`nnsdm.scaleout.local` runs them on this machine (one job per visible GPU, else one after another);
* :mod:`nnsdm.scaleout.slurm` submits them to SLURM through submitit (optional extra ``nnsdm[slurm]``),
  requeued on preemption and time-out;
* :mod:`nnsdm.scaleout.jobs` is what runs inside each job (idempotent: resume, skip what is done);
* :mod:`nnsdm.scaleout.status` reads the records back (``nnsdm status``) and waits for jobs (``--wait``).
"""
