// The playground: streams a completion from this server and colours each piece by the
// member that ranked it first.  Plain browser JavaScript, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let members = [];
let controller = null;

function esc(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function visible(text) {
  // Whitespace made visible in the tooltip, where a bare space would vanish.
  return text.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
}

function leader(step) {
  // The member with the highest renormalised probability for the chosen candidate.
  let best = 0;
  members.forEach((name, i) => {
    if ((step.member_probs[name] ?? 0) > (step.member_probs[members[best]] ?? 0)) best = i;
  });
  return best;
}

function pct(p) {
  return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%";
}

async function init() {
  const health = await (await fetch("/health")).json();
  model = health.model;
  members = health.members.map((m) => m.name);
  $("model").textContent = model;
  $("legend").innerHTML = members
    .map((name, i) => `<span class="swatch m${i % 6}" data-member="${esc(name)}">${esc(name)} ranked it first</span>`)
    .join("");
}

function showTooltip(ev) {
  const span = ev.target.closest(".piece");
  if (!span || !span._step) {
    $("tooltip").hidden = true;
    return;
  }
  const step = span._step;
  const rows = [...step.union].sort((a, b) => b.prob - a.prob).map((c) => {
    const cls = c.text === step.chosen && Boolean(c.end) === Boolean(step.end) ? ' class="chosen"' : "";
    const cells = members.map((n) => `<td>${pct(c.members[n] ?? 0)}</td>`).join("");
    return `<tr${cls}><td class="cand">${esc(visible(c.text))}</td><td>${pct(c.prob)}</td>${cells}</tr>`;
  });
  const head = members.map((n) => `<th>${esc(n)}</th>`).join("");
  const tip = $("tooltip");
  tip.innerHTML =
    `<div>step ${step.index}: union of <b>${step.union_size}</b> candidates, chose <b>${esc(visible(step.chosen))}</b></div>` +
    `<table><thead><tr><th>candidate</th><th>ensemble</th>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
  tip.hidden = false;
  const x = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 8);
  const y = ev.clientY + 16 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 8 : ev.clientY + 16;
  tip.style.left = `${Math.max(0, x)}px`;
  tip.style.top = `${Math.max(0, y)}px`;
}

function addPiece(text, steps) {
  // The END step (flagged on the record; its text "<END>" could also be a real piece) adds no text.
  const shown = steps.filter((s) => !s.end);
  const step = shown.length ? shown[shown.length - 1] : steps[steps.length - 1];
  const span = document.createElement("span");
  span.textContent = text;
  if (step) {
    const who = leader(step);
    span.className = `piece m${who % 6}`;
    span.dataset.member = members[who];
    span.dataset.step = String(step.index);
    span._step = step;
  }
  $("output").appendChild(span);
}

async function generate(ev) {
  ev.preventDefault();
  const prompt = $("prompt").value;
  const chat = $("chat").checked;
  const body = {
    model,
    stream: true,
    max_tokens: Number($("max_tokens").value),
    temperature: Number($("temperature").value),
    unite: { explain: true, union: true },
  };
  if (chat) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  const out = $("output");
  out.innerHTML = chat ? "" : `<span class="prompt">${esc(prompt)}</span>`;
  $("status").textContent = "generating…";
  $("status").className = "muted";
  $("generate").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  let steps = 0;
  try {
    const resp = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json();
      throw new Error(err.error ? err.error.message : resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finish = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        const choice = msg.choices[0];
        if (!choice) continue;
        const text = chat ? choice.delta.content ?? "" : choice.text;
        const stepList = msg.unite ? msg.unite.steps : [];
        steps += stepList.length;
        if (text) addPiece(text, stepList);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    $("status").textContent = `done (${finish}), ${steps} steps`;
  } catch (err) {
    if (err.name === "AbortError") {
      $("status").textContent = `stopped after ${steps} steps`;
    } else {
      $("status").textContent = `error: ${err.message}`;
      $("status").className = "error";
    }
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("output").addEventListener("mouseover", showTooltip);
$("output").addEventListener("mousemove", showTooltip);
$("output").addEventListener("mouseleave", () => {
  $("tooltip").hidden = true;
});
init().catch((err) => {
  $("status").textContent = `error: ${err.message}`;
  $("status").className = "error";
});
