/**
 * The playground page (GET /): one self-contained HTML document, kept in TypeScript so the build
 * ships it without an asset step. It uses only the public API: /v1/models, /v1/loras, and
 * /v1/images/generations with `stream: true` (read with fetch, since EventSource cannot POST).
 */
/**
 * The prompt the page opens with: a caption in the grammar of the shapes world, since the first
 * model the server serves by default is the one Stepwise trained there (world/model/shapes).
 */
export const PLAYGROUND_DEFAULT_PROMPT = "a large red circle on the left, navy background";
/** The guidance scale the shapes model was evaluated at (world eval: CFG 5). */
export const PLAYGROUND_DEFAULT_GUIDANCE = 5;

export const PLAYGROUND_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stepwise playground</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f6f7fb; }
  body { margin: 0; display: grid; grid-template-columns: minmax(320px, 420px) 1fr; min-height: 100vh; }
  form { padding: 20px; background: #fff; border-right: 1px solid #e1e4ec; display: flex; flex-direction: column; gap: 10px; }
  h1 { font-size: 18px; margin: 0 0 6px; }
  label { display: flex; flex-direction: column; gap: 4px; font-size: 13px; color: #4a5164; }
  textarea, input, select { font: inherit; padding: 6px 8px; border: 1px solid #cfd4e0; border-radius: 6px; color: #1d2330; box-sizing: border-box; width: 100%; min-width: 0; }
  .row > label { min-width: 0; }
  .hint { font-size: 12px; color: #7a8194; }
  .row { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
  .lora { display: grid; grid-template-columns: 1fr 80px 28px; gap: 6px; align-items: center; }
  button { font: inherit; padding: 8px 12px; border-radius: 6px; border: 1px solid #3b5bdb; background: #3b5bdb; color: #fff; cursor: pointer; }
  button.secondary { background: #fff; color: #3b5bdb; }
  button:disabled { opacity: .5; cursor: default; }
  main { padding: 20px; display: flex; flex-direction: column; gap: 12px; align-items: flex-start; }
  progress { width: 320px; height: 14px; }
  #image { max-width: 512px; image-rendering: pixelated; min-width: 256px; border-radius: 6px; background: #e9ecf3; }
  #status { font-size: 13px; color: #4a5164; }
  #error { color: #c92a2a; font-size: 13px; white-space: pre-wrap; }
  pre { background: #fff; border: 1px solid #e1e4ec; border-radius: 6px; padding: 10px; font-size: 12px; max-width: 640px; overflow: auto; }
</style>
</head>
<body>
<form id="form">
  <h1>Stepwise playground</h1>
  <label>Prompt <textarea id="prompt" rows="3" required>${PLAYGROUND_DEFAULT_PROMPT}</textarea></label>
  <label>Negative prompt <textarea id="negative" rows="2"></textarea></label>
  <div class="row">
    <label>Model <select id="model"></select></label>
    <label>Scheduler <select id="scheduler"></select></label>
  </div>
  <div class="row">
    <label>Steps <input id="steps" type="number" min="1" max="150" value="20"></label>
    <label>Guidance <input id="guidance" type="number" min="0" max="30" step="0.5" value="${PLAYGROUND_DEFAULT_GUIDANCE}"></label>
  </div>
  <div class="row">
    <label>Seed <input id="seed" type="number" min="0" placeholder="random"></label>
    <label>Size <input id="size" placeholder="default" pattern="[0-9]+x[0-9]+"></label>
  </div>
  <div>
    <label>LoRAs</label>
    <div id="loras"></div>
    <button type="button" class="secondary" id="add-lora" disabled>Add LoRA</button>
    <span class="hint" id="lora-hint">Loading the registry...</span>
  </div>
  <label>API key (when the server requires one) <input id="apikey" type="password" autocomplete="off"></label>
  <button id="generate" type="submit">Generate</button>
</form>
<main>
  <progress id="progress" max="1" value="0"></progress>
  <div id="status">Ready.</div>
  <div id="error"></div>
  <img id="image" alt="generated image">
  <pre id="details"></pre>
</main>
<script>
const $ = (id) => document.getElementById(id);
const keyInput = $("apikey");
keyInput.value = localStorage.getItem("stepwise-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("stepwise-key", keyInput.value);
  load(); // a server with keys lists nothing until it has one
});
const headers = () => {
  const h = { "content-type": "application/json" };
  if (keyInput.value) h.authorization = "Bearer " + keyInput.value;
  return h;
};
let loraNames = [];

async function getJson(url) {
  const res = await fetch(url, { headers: headers() });
  const body = await res.json();
  if (!res.ok) throw Object.assign(new Error(body.error ? body.error.message : res.statusText), { status: res.status });
  return body;
}

async function load() {
  $("error").textContent = "";
  $("model").length = 0;
  $("scheduler").length = 0;
  try {
    const models = await getJson("/v1/models");
    for (const m of models.data) $("model").add(new Option(m.id + " (" + m.family + ")", m.id));
    for (const s of (models.data[0] && models.data[0].schedulers) || []) $("scheduler").add(new Option(s, s));
    $("scheduler").add(new Option("model default", ""), 0);
    $("scheduler").value = "";
  } catch (e) {
    $("error").textContent = "Could not load the models: " + (e.message || e);
  }
  // Without a registry (or with an empty one) there is nothing to pick: say so instead of offering empty rows.
  let hint = "";
  try {
    loraNames = (await getJson("/v1/loras")).data.map((l) => l.name);
    if (loraNames.length === 0) hint = "The registry has no LoRAs yet.";
  } catch (e) {
    loraNames = [];
    hint = e.status === 404 ? "This server has no LoRA registry." : "No LoRA list: " + (e.message || e);
  }
  $("add-lora").disabled = loraNames.length === 0;
  $("lora-hint").textContent = hint;
}

function addLora() {
  const row = document.createElement("div");
  row.className = "lora";
  const select = document.createElement("select");
  select.className = "lora-name";
  for (const n of loraNames) select.add(new Option(n, n));
  const weight = document.createElement("input");
  weight.type = "number"; weight.step = "0.1"; weight.value = "1"; weight.className = "lora-weight";
  const remove = document.createElement("button");
  remove.type = "button"; remove.className = "secondary"; remove.textContent = "x";
  remove.onclick = () => row.remove();
  row.append(select, weight, remove);
  $("loras").append(row);
}
$("add-lora").onclick = addLora;

function body() {
  const b = { prompt: $("prompt").value, steps: Number($("steps").value), guidance_scale: Number($("guidance").value), stream: true };
  if ($("model").value) b.model = $("model").value;
  if ($("negative").value) b.negative_prompt = $("negative").value;
  if ($("scheduler").value) b.scheduler = $("scheduler").value;
  if ($("seed").value !== "") b.seed = Number($("seed").value);
  if ($("size").value) b.size = $("size").value;
  b.loras = [...document.querySelectorAll(".lora")].map((r) => ({ name: r.querySelector(".lora-name").value, weight: Number(r.querySelector(".lora-weight").value) }));
  return b;
}

async function generate(event) {
  event.preventDefault();
  $("generate").disabled = true; $("error").textContent = ""; $("status").textContent = "Queued...";
  $("progress").value = 0;
  try {
    const res = await fetch("/v1/images/generations", { method: "POST", headers: headers(), body: JSON.stringify(body()) });
    if (!res.ok) { const e = await res.json(); throw new Error(e.error ? e.error.message : res.statusText); }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const event = (frame.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((frame.match(/^data: (.*)$/m) || [])[1] || "null");
        if (event === "queued") {
          $("status").textContent = "Queued (position " + data.position + ")...";
        } else if (event === "progress") {
          $("progress").max = data.total; $("progress").value = data.step;
          $("status").textContent = "Step " + data.step + " / " + data.total + " (" + data.elapsed_ms + " ms)";
        } else if (event === "result") {
          $("image").src = "data:image/png;base64," + data.data[0].b64_json;
          $("status").textContent = "Done: seed " + data.data[0].seed + ", " + Math.round(data.timings.total_ms) + " ms";
          const timings = Object.fromEntries(Object.entries(data.timings).map(([k, v]) => [k, Math.round(v * 10) / 10]));
          $("details").textContent = JSON.stringify({ model: data.model, seed: data.data[0].seed, loras: data.loras, timings }, null, 2);
        } else if (event === "error") {
          throw new Error(data.message);
        }
      }
    }
  } catch (e) {
    $("error").textContent = String(e.message || e); $("status").textContent = "Failed.";
  } finally {
    $("generate").disabled = false;
  }
}
$("form").addEventListener("submit", generate);
load();
</script>
</body>
</html>
`;
