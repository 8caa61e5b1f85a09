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
    from ..cascade_config import CascadeConfig, ConfigError
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
    local_llm = args.llm_model and not (config.llm_address or config.llm_openai_base_url)
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
            llm_executor = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer))
            llm_executor.model_name = f"{slm.model_name} (stand-in LLM)"
        else:
            llm_executor = TorchExecutor(args.llm_model, device=args.device, dtype=args.dtype)
        executors.append(llm_executor)
        llm = ExecutorLLM(llm_executor)
    try:
        return Cascade(slm, llm, config), executors
    except ConfigError as err:
        for executor in executors:
            executor.close()
        raise CommandError(str(err)) from None
