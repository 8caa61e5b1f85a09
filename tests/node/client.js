// Calls corea.v1.Corea/Solve and SolveStream using only protos/corea/v1/corea.proto:
// @grpc/proto-loader builds the client at run time, @grpc/grpc-js speaks HTTP/2.
// usage: node client.js HOST:PORT "question" [mode]   -> one JSON line per call on stdout
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "protos", "corea", "v1", "corea.proto");
const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
const corea = grpc.loadPackageDefinition(definition).corea.v1;

const [address, question, mode = "ROUTING_MODE_SLM_ONLY"] = process.argv.slice(2);
const client = new corea.Corea(address, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 600 * 1000);
const request = { question, request_id: "node-1", mode };

function fail(err) {
  console.log(JSON.stringify({ error: grpc.status[err.code], details: err.details }));
  process.exit(3);
}

client.Solve(request, { deadline: deadline() }, (err, response) => {
  if (err) return fail(err);
  console.log(JSON.stringify({ call: "Solve", response }));
  const kinds = [];
  const stream = client.SolveStream({ ...request, request_id: "node-2" }, { deadline: deadline() });
  stream.on("data", (event) => kinds.push(event.event));
  stream.on("error", fail);
  stream.on("end", () => {
    console.log(JSON.stringify({ call: "SolveStream", events: kinds }));
    client.Solve({ question: "" }, { deadline: deadline() }, (bad) => {
      console.log(JSON.stringify({ call: "Solve(empty)", error: bad ? grpc.status[bad.code] : null, details: bad && bad.details }));
      client.close();
    });
  });
});
