"""Arguments and assembly shared by `corea serve` and `corea solve` (in-process cascade)."""

from __future__ import annotations

from .common import add_model_args, default_threads, make_executor


def add_cascade_args(p) -> None:
    p.add_argument("--config", default=None, help="cascade settings, TOML or JSON (COREA_* environment variables override it)")
    p.add_argument("--threshold", type=float, default=None, help="accept the SLM answer when confidence >= this (0..1)")
    p.add_argument("--calibrator", default=None, help="a `corea calibrate --fit` file, applied to the confidence before the threshold")
    p.add_argument("--tie-defer-prob", type=float, default=None,
                   help="defer a confidence equal to the threshold with this probability (`corea calibrate`'s tie_defer_prob)")
    p.add_argument("--tie-seed", type=int, default=None, help="seed of the per-request tie draw")
    p.add_argument("--mode", choices=["cascade", "slm_only", "llm_only"], default=None)
    p.add_argument("--confidence-source", choices=["expected", "sampled"], default=None)
    p.add_argument("--contract", default=None, help="json, tags, json_confidence_first, tags_confidence_first")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--tier", action="append", default=None, metavar="SPEC",
                   help="N tiers, cheapest first, one flag each (instead of --llm-*/--slm-address/--threshold): "
                        "name=NAME[,address=HOST:PORT|openai-base-url=URL|model=SPEC][,threshold=T]"
                        "[,prompt-price=P][,completion-price=P][,calibrator=FILE][,temperature=T][,tokenizer=SPEC]; "
                        "or [[cascade.tiers]] tables in --config")
    g = p.add_argument_group("LLM tier (one of)")
    g.add_argument("--llm-address", default=None,
                   help="host:port of an engine speaking the SglangScheduler gRPC protocol (`corea worker`, "
                        "`sglang serve --grpc-mode`, `vllm serve --grpc`)")
    g.add_argument("--llm-openai-base-url", default=None, help="an OpenAI-compatible endpoint (key from $OPENAI_API_KEY)")
    g.add_argument("--llm-model", default=None,
                   help="with --llm-openai-base-url: the endpoint's model name; alone: a model run in this "
                        "process as the LLM tier (the embedded default makes it a stand-in)")
    g.add_argument("--llm-tokenizer", default=None,
                   help="the LLM tier's tokenizer (model spec or folder): with --llm-address instead of GetTokenizer; with "
                        "--llm-openai-base-url to count tokens when the endpoint reports no usage (else estimated "
                        "at 4 characters a token)")
    g.add_argument("--no-llm-response-format", action="store_true",
                   help="with --llm-openai-base-url: do not send the contract as response_format json_schema")
    g = p.add_argument_group("SLM tier in another process (instead of --model)")
    g.add_argument("--slm-address", default=None,
                   help="host:port of an engine speaking the SglangScheduler gRPC protocol that runs the SLM")
    g.add_argument("--slm-tokenizer", default=None,
                   help="with --slm-address: the SLM's tokenizer folder (default: fetched with GetTokenizer)")
    add_model_args(p)


def load_config(args):
    from ..cascade_config import CascadeConfig, ConfigError, TierConfig
    from ..cli import CommandError

    try:
        config = CascadeConfig.load(args.config)
        changes = dict(threshold=args.threshold, calibrator=args.calibrator, tie_defer_prob=args.tie_defer_prob,
                       tie_seed=args.tie_seed, mode=args.mode, confidence_source=args.confidence_source,
                       contract=args.contract, max_new_tokens=args.max_new_tokens,
                       llm_address=args.llm_address, llm_tokenizer=args.llm_tokenizer,
                       llm_openai_base_url=args.llm_openai_base_url)
        if args.llm_openai_base_url:
            changes["llm_model"] = args.llm_model
            if args.no_llm_response_format:
                changes["llm_response_format"] = False
        if getattr(args, "tier", None):
            given = [flag for flag in ("threshold", "calibrator", "llm_address", "llm_openai_base_url", "llm_model",
                                       "llm_tokenizer", "slm_address", "slm_tokenizer") if getattr(args, flag, None)]
            if given:
                raise CommandError(f"--tier gives every tier's settings: drop --{given[0].replace('_', '-')}")
            changes["tiers"] = tuple(TierConfig.parse(spec) for spec in args.tier)
        return config.replace(**changes)
    except ConfigError as err:
        raise CommandError(str(err)) from None


def build_cascade(args, config=None):
    """(cascade, executors to close). The in-process LLM shares the SLM's weights when it is the same model."""
    from ..cascade import Cascade
    from ..cascade_config import ConfigError
    from ..cli import CommandError
    from ..escalation.factory import make_client
    from ..escalation.local_llm import ExecutorLLM
    from ..runtime.torch_executor import TorchExecutor

    config = config or load_config(args)
    if config.tiers is not None:
        return build_tiers(args, config)
    local_llm = args.llm_model and not (config.llm_address or config.llm_openai_base_url)
    if local_llm:
        check_model(args.llm_model, "--llm-model")
    if config.mode != "slm_only" and not (config.llm_address or config.llm_openai_base_url or local_llm):
        raise CommandError("the cascade needs an LLM tier: --llm-address, --llm-openai-base-url with --llm-model, "
                           "--llm-model for an in-process one, or --mode slm_only")
    if args.slm_address:
        from ..runtime.executor import ExecutorError
        from ..runtime.remote_executor import RemoteExecutor

        if local_llm:
            raise CommandError("--llm-model runs the LLM in this process beside a local SLM; "
                               "with --slm-address give --llm-address or --llm-openai-base-url")
        try:
            slm = RemoteExecutor(args.slm_address, tokenizer=args.slm_tokenizer)
        except ExecutorError as err:
            raise CommandError(str(err)) from None
    else:
        slm = make_executor(args, threads=default_threads())  # --backend torch|sglang
    executors = [slm]
    llm = make_client(config)
    if llm is None and local_llm:
        if isinstance(slm, TorchExecutor) and args.llm_model == (args.model or "smollm2-135m"):
            llm_executor = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer), quantization=slm.quantization)
            llm_executor.model_name = f"{slm.model_name} (stand-in LLM)"
        else:
            llm_executor = TorchExecutor(args.llm_model, device=args.device, dtype=args.dtype,
                                         quantization=args.quantization)
        executors.append(llm_executor)
        llm = ExecutorLLM(llm_executor)
    try:
        return Cascade(slm, llm, config), executors
    except ConfigError as err:
        for executor in executors:
            executor.close()
        raise CommandError(str(err)) from None


def check_model(spec: str, setting: str) -> None:
    """A model that is not there fails before any weights load, naming the setting that gave it
    (CommandError)."""
    from ..cli import CommandError
    from ..models import ModelNotFoundError, resolve_model

    try:
        resolve_model(spec)
    except ModelNotFoundError as err:
        raise CommandError(f"{setting}: {err}") from None


def build_tiers(args, config):
    """(cascade, executors to close) for config.tiers: every tier on its executor or client.

    The first tier and any middle tier with an address run on a RemoteExecutor (it reads the
    confidence distribution); a middle tier with an OpenAI endpoint is a client (verbalized
    confidence only); the last tier with an address or endpoint is a client; a tier with a model
    alone runs in this process (sharing the first tier's weights when it is the same model)."""
    import copy

    from ..cascade import Cascade
    from ..cascade_config import ConfigError
    from ..cli import CommandError
    from ..escalation.factory import make_tier_client, tokenizer_folder
    from ..escalation.local_llm import ExecutorLLM
    from ..runtime.executor import ExecutorError
    from ..runtime.remote_executor import RemoteExecutor
    from ..runtime.torch_executor import TorchExecutor

    tiers = config.tier_list()
    for i, tier in enumerate(tiers):  # before any weights load or connection opens
        if tier.model and not (tier.address or tier.openai_base_url):  # run in this process
            check_model(tier.model, f"tier {i} ({tier.name}) model")
        placed = i == 0 or tier.address or tier.openai_base_url or tier.model
        if not placed and not (i == len(tiers) - 1 and config.mode == "slm_only"):
            raise CommandError(f"tier {i} ({tier.name}) needs address=, openai-base-url= (with model=) or model=")
    executors, backends = [], []
    try:
        for i, tier in enumerate(tiers):
            last = i == len(tiers) - 1
            if tier.address and not last:
                backend = RemoteExecutor(tier.address, tokenizer=tokenizer_folder(tier.tokenizer, f"{tier.label} tokenizer"))
                executors.append(backend)
            elif tier.address or tier.openai_base_url:
                backend = make_tier_client(tier, config, secured=last)
            elif i == 0 or tier.model:
                first = executors[0] if executors else None
                model = tier.model or args.model or "smollm2-135m"
                if i == 0:
                    tier_args = copy.copy(args)
                    tier_args.model = model
                    executor = make_executor(tier_args, threads=default_threads())
                elif isinstance(first, TorchExecutor) and model == (tiers[0].model or args.model or "smollm2-135m"):
                    executor = TorchExecutor(model_and_tokenizer=(first.model, first.tokenizer),
                                             quantization=first.quantization)
                    executor.model_name = f"{first.model_name} (stand-in {tier.name})"
                else:
                    executor = TorchExecutor(model, device=args.device, dtype=args.dtype, quantization=args.quantization)
                executors.append(executor)
                backend = ExecutorLLM(executor) if last else executor
            else:  # the last tier under slm_only (checked above)
                backend = None
            backends.append(backend)
        return Cascade.tiered(backends, config), executors
    except BaseException as err:  # whatever failed, what was built is closed
        for executor in executors:
            executor.close()
        if isinstance(err, (ConfigError, ExecutorError)):
            raise CommandError(str(err)) from None
        raise
