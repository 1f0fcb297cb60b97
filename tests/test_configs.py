"""Every shipped accelerate config (configs/accelerate_*.yaml) goes through what `accelerate launch
--config_file` does: accelerate's loader (unknown keys fail), its launch-command validation, the
environment its launcher hands the training processes, and the DDP / FSDP / DeepSpeed plugin
accelerate builds from that environment. DeepSpeed itself is not installed here and not needed:
the DeepSpeed plugin's config is built by accelerate alone."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ACCELERATE_CONFIGS = sorted((ROOT / "configs").glob("accelerate_*.yaml"))


def test_the_shipped_accelerate_configs():
    assert [p.name for p in ACCELERATE_CONFIGS] == ["accelerate_ddp.yaml", "accelerate_deepspeed_zero3.yaml",
                                                    "accelerate_fsdp.yaml"]


def _launcher_env(path: Path) -> tuple[object, dict[str, str]]:
    """(accelerate's ClusterConfig, the environment `accelerate launch --config_file path` gives the workers)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        assert args.multi_gpu or args.use_fsdp, "a shipped config is multi-process"
        env = prepare_multi_gpu_env(args)
    return defaults, env


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_builds_the_plugin_from_each_config(path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert (cfg.num_machines, cfg.machine_rank, cfg.num_processes) == (1, 0, 8)
    assert cfg.mixed_precision == "bf16" and cfg.use_cpu is False
    launch_options = {a.dest for a in launch_command_parser()._actions}
    for section in (cfg.fsdp_config, cfg.deepspeed_config):  # accelerate ignores unknown keys in these
        assert set(section) <= launch_options, set(section) - launch_options

    defaults, env = _launcher_env(path)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if cfg.distributed_type == DistributedType.FSDP:
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD in FSDP2
        assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT  # sharded checkpoints
        assert plugin.cpu_ram_efficient_loading is True and plugin.auto_wrap_policy is not None
        assert env["FSDP_OFFLOAD_PARAMS"] == "false"
    elif cfg.distributed_type == DistributedType.DEEPSPEED:
        from transformers.integrations import unset_hf_deepspeed_config

        try:
            ds = DeepSpeedPlugin().deepspeed_config
        finally:
            unset_hf_deepspeed_config()
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # final save_pretrained
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        # rlaif fills these from batch_size, grad_accum, max_grad_norm (runtime.make_accelerator)
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", key
    else:
        assert cfg.distributed_type == DistributedType.MULTI_GPU
        assert cfg.fsdp_config == {} and cfg.deepspeed_config == {} and "ACCELERATE_USE_FSDP" not in env


def test_a_misspelt_plugin_key_is_caught(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    bad = tmp_path / "bad.yaml"
    shipped = (ROOT / "configs" / "accelerate_deepspeed_zero3.yaml").read_text()
    bad.write_text(shipped.replace("zero_stage", "zero_stag"))
    cfg = load_config_from_file(str(bad))  # accelerate itself takes it
    assert set(cfg.deepspeed_config) - {a.dest for a in launch_command_parser()._actions} == {"zero_stag"}
