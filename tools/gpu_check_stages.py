"""GPU check (issue #13): the stage contract on CUDA (stage 01's config builder, fine-tuning with the
baseline's seed, load_stage, channel-pruned fine-tuning from a stage's files), short schedules."""
import functools, json, os, sys, time
from pathlib import Path

import torch

from wildlib import channels, evaluate, modeling, prune, stages, train

iters = int(sys.argv[1]) if len(sys.argv) > 1 else 300
device = "cuda" if torch.cuda.is_available() else "cpu"
out = Path(os.environ.get("OUT", "/tmp/check13"))
out.mkdir(parents=True, exist_ok=True)
run = Path("/tmp/check13_run")
t0, log = time.time(), {"device": device, "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
explore = stages.stage_dir(run, stages.EXPLORE)
stages.save_stage(explore, {"data_dir": str(Path("data/savanna").resolve()), "classes": [], "aliases": {}}, {})
run_, base_dir, data_dir, classes, aliases, datasets = stages.open_stage(run, stages.BASELINE)
cfg = stages.baseline_config(run, base_dir, "mobilenet_fpn_cpu", {"DATALOADER.NUM_WORKERS": 2}, classes,
                             device=device, max_iter=iters, ims_per_batch=8, lr=0.02, eval_period=0, seed=7,
                             lr_steps=(0.5, 0.75))
r = train.train(cfg)
model = train.unwrap(r["model"]).eval()
modeling.save_weights(model, base_dir / stages.MODEL_FILE)
stages.save_stage(base_dir, cfg.dump(), {"bbox": r["evals"][-1] if r["evals"] else None}, cfg=cfg)
log["01"] = {"iters": r["iterations_run"], "s_per_iter": r["s_per_iter"], "AP50": evaluate.coco(model, cfg, datasets["valid"], quiet=True)["AP50"]}
pr_dir = stages.stage_dir(run, stages.PRUNE)
ft = stages.finetune_config(base_dir, pr_dir, device=device, max_iter=iters // 2, ims_per_batch=8, lr=0.01,
                            eval_period=0)
assert ft.SEED == 7 and ft.MODEL.DEVICE == device, (ft.SEED, ft.MODEL.DEVICE)
hook = functools.partial(prune.GradualPruning, "all", 0.8, 0, iters // 4, 10, ranking="lamp")
r2 = train.train(ft, hooks=[hook])
pruned = prune.make_permanent(train.unwrap(r2["model"])).eval()
modeling.save_weights(pruned, pr_dir / stages.PRUNED_FILE)
stages.save_stage(pr_dir, {"baseline_dir": str(base_dir), "num_gpus": 1}, {"sparsity": prune.sparsity(pruned)}, cfg=ft)
rec = stages.load_stage(pr_dir, stages.PRUNED_FILE)
log["02"] = {"seed": ft.SEED, "sparsity": rec.metrics["sparsity"], "s_per_iter": r2["s_per_iter"],
             "AP50_reloaded": evaluate.coco(rec.model.to(device), rec.cfg, datasets["valid"], quiet=True)["AP50"]}
ch_dir = stages.stage_dir(run, stages.CHANNELS)
small = channels.prune(model.cpu(), {"m3": 0.5, "m4": 0.5, "rpn": 0.5})
small_cfg = channels.config_for(cfg, small)
(ch_dir / "init").mkdir(parents=True, exist_ok=True)
(ch_dir / "init" / stages.D2_CONFIG_FILE).write_text(small_cfg.dump())
modeling.save_weights(small, ch_dir / "init" / "model.pth")
ft3 = stages.finetune_config(base_dir, ch_dir, device=device, max_iter=iters // 2, ims_per_batch=8, lr=0.002,
                             eval_period=0, config_file=ch_dir / "init" / stages.D2_CONFIG_FILE,
                             weights=ch_dir / "init" / "model.pth")
r3 = train.train(ft3)
log["04"] = {"widths": channels.widths(train.unwrap(r3["model"])), "s_per_iter": r3["s_per_iter"],
             "AP50": evaluate.coco(train.unwrap(r3["model"]).eval(), ft3, datasets["valid"], quiet=True)["AP50"]}
log["seconds"] = time.time() - t0
(out / "check13.json").write_text(json.dumps(log, indent=1, default=str))
print(json.dumps(log, default=str))
