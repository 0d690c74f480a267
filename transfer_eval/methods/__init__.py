"""The methods wing: how a model is adapted, scored and priced.

- `modes.py`: selectors and modes as data (`MODES`): what trains, which stage, recipe defaults, protocol version;
- the probes on frozen features: `probe.py` and `logistic.py` (the linear probe's C search and L-BFGS solver),
  `fewshot.py` (big_vision's closed-form few-shot regression), `knn.py` (DINO's weighted k-NN);
- training: `finetune.py` (the loop, lr grid, retrain, OOM back-off), `presets.py` (the named recipes `vit`,
  `deit`, `vtab`), `resume.py` (training checkpoints, pre-emption);
- structure the parameter-efficient modes add: `blocks.py` (the timm VisionTransformer they adapt), `prompts.py`
  (VPT-shallow, VPT-deep), `bottlenecks.py` (NOAH's Adapter, AdaptFormer), `ssf.py`, `lora.py`; `seeding.py`: the
  generator every new tensor is drawn from (the run's seed, the mode, the tensor's name);
- `inference.py`: the one evaluation loop (features or top-k predictions); `scoring.py`: how a trained run scores a
  split (top-5, probabilities, the temperature fitted on val), test and companion sets alike; `calibration.py`:
  ECE, NLL, temperature scaling; `companions.py`: companion test sets;
- cost: `costs.py` (FLOPs and parameter counts), `deltas.py` (what one more task stores).

It may import the store, input and tasks wings and the shared pieces at the root.
"""
