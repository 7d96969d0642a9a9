"""tfsim: image similarity (deep metric learning) with TensorFlow and Keras, from a folder of
labelled images to a served ScaNN index.

The package is layered; a module imports only from its own layer or those below it, never
upward, not even inside a function, and no two sub-packages import each other
(tests/test_layers.py checks it). Bottom to top:

    errors, options, distances,   user errors; what each sampler, backbone and loss takes
    locks, files                  (TensorFlow-free); one definition per distance; folder
                                  locks; atomic writes and version folders
    data/                         sources (folder, list file, TFDS, the shipped default), data
                                  specs, splits, decoding, tf.data pipelines, P x K samplers
    losses/, models/              one file per loss family (functions + Keras classes);
                                  backbones, embedding head, proxies, whitening
    config/                       schema (frozen dataclasses), parsing (presets, --set),
                                  per-section validation
    runs.py                       a run folder's artefacts: checkpoints, whitening, the model
    evaluation/                   k-NN, Recall@K / MAP@R / mAP, report tables, embedding with a
                                  Keras model: a library
    index/                        float search (ScaNN), Hamming search, self-tuning, the ANN
                                  quality, storage of an index folder
    export/                       SavedModels for TF Serving: an export's identity, embedding
                                  with it, retrieval exports, indexing and searching catalogues
    training/                     the Task (a config becomes inputs, model, loss, optimizer,
                                  callbacks, metrics), the fit loop, distributed training, the
                                  stages after it, evaluating a trained model
    tuning/                       keras-tuner search (its private API behind one adapter)
    pipelines/                    thin CLIs: `python -m tfsim.pipelines.{train,evaluate,index,search,tune}`
"""
