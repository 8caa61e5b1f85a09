// corea_load: a C++ load client for corea.v1.Corea (the same figures as `corea bench --target grpc`).
//
// Thread per connection slot: N threads share one channel and each keeps one SolveStream in
// flight, so concurrency N means N requests outstanding at all times. Each level runs a fixed
// number of requests (--requests, at least one per thread) or for a fixed time (--seconds). The report is JSON on stdout
// with the keys of corea_engine/bench/stats.py, one entry per concurrency level.
//
//   corea_load --target 127.0.0.1:50051 --questions q.txt --concurrency 1,2,4 --requests 16
//
// The question file holds one question per line; a newline inside a question is written "\n"
// and a backslash "\\" (corea_engine.bench.questions.write_question_file writes it).

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "corea/v1/corea.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string questions_path;
  std::vector<int> concurrency = {1};
  long requests = 16;    // per level; ignored when seconds > 0
  double seconds = 0.0;  // per level
  double timeout_s = 600.0;
  int warmup = 0;  // requests sent (and not measured) before the first level
  std::string contract;
  std::string mode;  // cascade | slm_only | llm_only | "" (server default)
  double threshold = -1.0;  // < 0: server default
  unsigned max_new_tokens = 0;
};

// One finished request, as the Python load generator records it.
struct Sample {
  double latency_s = 0.0;
  double decision_s = -1.0;  // < 0: no Decision event seen
  bool ok = false;
  bool deferred = false;
  unsigned slm_tokens = 0;
  unsigned llm_tokens = 0;
  std::string error;  // gRPC status code name when !ok
};

[[noreturn]] void Fail(const std::string& message) {
  std::cerr << "corea_load: error: " << message << "\n";
  std::exit(2);
}

std::vector<int> ParseLevels(const std::string& text) {
  std::vector<int> levels;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    long value = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < 1 || value > 4096)
      Fail("--concurrency wants positive integers separated by commas, got '" + text + "'");
    levels.push_back(static_cast<int>(value));
  }
  if (levels.empty()) Fail("--concurrency is empty");
  return levels;
}

double ParseNumber(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(value)) Fail(flag + " wants a number, got '" + text + "'");
  return value;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << "usage: corea_load --target HOST:PORT --questions FILE [--concurrency 1,2,4]\n"
                   "                  [--requests N | --seconds S] [--warmup N] [--timeout S]\n"
                   "                  [--contract NAME] [--mode cascade|slm_only|llm_only]\n"
                   "                  [--threshold T] [--max-new-tokens N]\n";
      std::exit(0);
    }
    if (i + 1 >= argc) Fail(flag + " needs a value");
    std::string value = argv[++i];
    if (flag == "--target") opt.target = value;
    else if (flag == "--questions") opt.questions_path = value;
    else if (flag == "--concurrency") opt.concurrency = ParseLevels(value);
    else if (flag == "--requests") opt.requests = static_cast<long>(ParseNumber(flag, value));
    else if (flag == "--seconds") opt.seconds = ParseNumber(flag, value);
    else if (flag == "--timeout") opt.timeout_s = ParseNumber(flag, value);
    else if (flag == "--warmup") opt.warmup = static_cast<int>(ParseNumber(flag, value));
    else if (flag == "--contract") opt.contract = value;
    else if (flag == "--mode") opt.mode = value;
    else if (flag == "--threshold") opt.threshold = ParseNumber(flag, value);
    else if (flag == "--max-new-tokens") opt.max_new_tokens = static_cast<unsigned>(ParseNumber(flag, value));
    else Fail("unknown option " + flag);
  }
  if (opt.questions_path.empty()) Fail("--questions is required");
  if (opt.seconds <= 0 && opt.requests < 1) Fail("--requests must be at least 1 (or give --seconds)");
  if (opt.threshold > 1.0) Fail("--threshold must be in [0, 1]");
  if (!opt.mode.empty() && opt.mode != "cascade" && opt.mode != "slm_only" && opt.mode != "llm_only")
    Fail("--mode must be cascade, slm_only or llm_only, got '" + opt.mode + "'");
  return opt;
}

std::vector<std::string> ReadQuestions(const std::string& path) {
  std::ifstream in(path);
  if (!in) Fail("cannot read question file " + path);
  std::vector<std::string> questions;
  std::string line;
  while (std::getline(in, line)) {
    std::string q;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        char next = line[++i];
        q += next == 'n' ? '\n' : next;
      } else {
        q += line[i];
      }
    }
    if (!q.empty()) questions.push_back(q);
  }
  if (questions.empty()) Fail("question file " + path + " has no questions");
  return questions;
}

corea::v1::SolveRequest BuildRequest(const Options& opt, const std::string& question, const std::string& id) {
  corea::v1::SolveRequest request;
  request.set_question(question);
  request.set_request_id(id);
  if (opt.threshold >= 0) request.set_threshold(opt.threshold);
  if (!opt.contract.empty()) request.set_contract(opt.contract);
  if (opt.max_new_tokens > 0) request.set_max_new_tokens(opt.max_new_tokens);
  if (opt.mode == "cascade") request.set_mode(corea::v1::ROUTING_MODE_CASCADE);
  if (opt.mode == "slm_only") request.set_mode(corea::v1::ROUTING_MODE_SLM_ONLY);
  if (opt.mode == "llm_only") request.set_mode(corea::v1::ROUTING_MODE_LLM_ONLY);
  return request;
}

const char* StatusName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    default: return "OTHER";
  }
}

// One SolveStream call: latency to the last event, time to the Decision event, the result.
Sample Solve(corea::v1::Corea::Stub& stub, const Options& opt, const corea::v1::SolveRequest& request) {
  Sample sample;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<long>(opt.timeout_s * 1000)));
  auto start = Clock::now();
  auto reader = stub.SolveStream(&context, request);
  corea::v1::SolveEvent event;
  bool have_result = false;
  while (reader->Read(&event)) {
    if (event.has_decision() && sample.decision_s < 0) {
      sample.decision_s = std::chrono::duration<double>(Clock::now() - start).count();
      sample.deferred = event.decision().deferred();
    }
    if (event.has_result()) {
      const auto& result = event.result();
      have_result = true;
      sample.deferred = result.deferred();
      sample.slm_tokens = result.slm_tokens().completion_tokens();
      sample.llm_tokens = result.llm_tokens().completion_tokens();
    }
  }
  grpc::Status status = reader->Finish();
  sample.latency_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (!status.ok()) {
    sample.error = StatusName(status.error_code());
  } else if (!have_result) {
    sample.error = "NO_RESULT";
  } else {
    sample.ok = true;
  }
  return sample;
}

// Linear interpolation between closest ranks (numpy's default), as stats.py computes it.
double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return NAN;
  std::sort(values.begin(), values.end());
  double rank = q / 100.0 * static_cast<double>(values.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(rank));
  size_t hi = static_cast<size_t>(std::ceil(rank));
  return values[lo] + (values[hi] - values[lo]) * (rank - static_cast<double>(lo));
}

std::string Number(double value) {
  if (!std::isfinite(value)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.6g", value);
  return buffer;
}

std::string LevelJson(int concurrency, const std::vector<Sample>& samples, double duration_s) {
  std::vector<double> latency_ms, decision_ms;
  std::map<std::string, long> error_kinds;
  long ok = 0, deferred = 0, slm_tokens = 0, llm_tokens = 0;
  for (const auto& s : samples) {
    if (!s.ok) {
      error_kinds[s.error] += 1;
      continue;
    }
    ++ok;
    latency_ms.push_back(s.latency_s * 1000.0);
    if (s.decision_s >= 0) decision_ms.push_back(s.decision_s * 1000.0);
    deferred += s.deferred ? 1 : 0;
    slm_tokens += s.slm_tokens;
    llm_tokens += s.llm_tokens;
  }
  double mean = 0.0;
  for (double v : latency_ms) mean += v;
  mean = latency_ms.empty() ? NAN : mean / static_cast<double>(latency_ms.size());
  double seconds = duration_s > 0 ? duration_s : NAN;
  std::ostringstream out;
  out << "{\"concurrency\": " << concurrency << ", \"requests\": " << samples.size() << ", \"ok\": " << ok
      << ", \"errors\": " << (static_cast<long>(samples.size()) - ok) << ", \"duration_s\": " << Number(duration_s)
      << ", \"requests_per_s\": " << Number(ok / seconds)
      << ", \"latency_p50_ms\": " << Number(Percentile(latency_ms, 50))
      << ", \"latency_p90_ms\": " << Number(Percentile(latency_ms, 90))
      << ", \"latency_p99_ms\": " << Number(Percentile(latency_ms, 99)) << ", \"latency_mean_ms\": " << Number(mean)
      << ", \"ttd_p50_ms\": " << Number(Percentile(decision_ms, 50))
      << ", \"ttd_p90_ms\": " << Number(Percentile(decision_ms, 90))
      << ", \"ttd_p99_ms\": " << Number(Percentile(decision_ms, 99)) << ", \"deferred\": " << deferred
      << ", \"deferral_rate\": " << Number(ok ? static_cast<double>(deferred) / ok : NAN)
      << ", \"slm_tokens\": " << slm_tokens << ", \"llm_tokens\": " << llm_tokens
      << ", \"slm_tokens_per_s\": " << Number(slm_tokens / seconds)
      << ", \"llm_tokens_per_s\": " << Number(llm_tokens / seconds) << ", \"error_kinds\": {";
  bool first = true;
  for (const auto& [kind, count] : error_kinds) {
    out << (first ? "" : ", ") << "\"" << kind << "\": " << count;
    first = false;
  }
  out << "}}";
  return out.str();
}

// Runs one level: `concurrency` threads each keep one request in flight until the budget is spent.
std::string RunLevel(corea::v1::Corea::Stub& stub, const Options& opt, const std::vector<std::string>& questions,
                     int concurrency) {
  // At least one request per worker, as the Python load generator does, so every slot is used.
  const long total = std::max(opt.requests, static_cast<long>(concurrency));
  std::atomic<long> next{0};
  std::mutex lock;
  std::vector<Sample> samples;
  auto start = Clock::now();
  auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.seconds));
  auto worker = [&]() {
    while (true) {
      long i = next.fetch_add(1);
      if (opt.seconds > 0 ? Clock::now() >= deadline : i >= total) return;
      auto request = BuildRequest(opt, questions[i % questions.size()],
                                  "cpp-c" + std::to_string(concurrency) + "-" + std::to_string(i));
      Sample sample = Solve(stub, opt, request);
      std::lock_guard<std::mutex> guard(lock);
      samples.push_back(sample);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) threads.emplace_back(worker);
  for (auto& thread : threads) thread.join();
  double duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return LevelJson(concurrency, samples, duration_s);
}

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  auto questions = ReadQuestions(opt.questions_path);
  auto channel = grpc::CreateChannel(opt.target, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)))
    Fail("cannot connect to " + opt.target);
  auto stub = corea::v1::Corea::NewStub(channel);

  for (int i = 0; i < opt.warmup; ++i) {
    Sample s = Solve(*stub, opt, BuildRequest(opt, questions[i % questions.size()], "cpp-warmup-" + std::to_string(i)));
    if (!s.ok) Fail("warm-up request failed: " + s.error);
  }
  std::cout << "{\"client\": \"cpp\", \"target\": \"grpc\", \"address\": \"" << Escape(opt.target)
            << "\", \"levels\": [";
  for (size_t i = 0; i < opt.concurrency.size(); ++i) {
    std::cout << (i ? ", " : "") << RunLevel(*stub, opt, questions, opt.concurrency[i]);
    std::cout.flush();
  }
  std::cout << "]}" << std::endl;
  return 0;
}
