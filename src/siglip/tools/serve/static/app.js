// The page of `siglip serve`: search by text or image, classify an image. Plain DOM, no build step, no CDN.
// Everything shown is set as text (textContent, attributes), never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_COOKIE = "siglip_api_key";
const RESULTS = 24;

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// Calls the API; resolves to the JSON body, or throws an Error carrying the server's message.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("The server cannot be reached: " + err.message);
  }
  const body = await response.json().catch(() => null);
  if (response.status === 401) $("key-panel").hidden = false;
  if (!response.ok) {
    const message = body && body.error ? body.error.message : "the server answered " + response.status;
    throw new Error(message);
  }
  return body;
}

const state = { indexSize: null, hasIndex: false };

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    state.hasIndex = info.index !== null;
    state.indexSize = state.hasIndex ? info.index.size : 0;
    const index = !state.hasIndex ? "no index" : state.indexSize === 1 ? "1 image indexed" : `${state.indexSize} images indexed`;
    say($("about"), `Model ${info.model} · ${index}`);
    $("template").placeholder = info.default_template;
    if (!state.hasIndex) say($("search-message"), "This server has no index: start it with `siglip serve --index DIR` to search.");
    else if (state.indexSize === 0) say($("search-message"), "The index is empty: add images with `siglip index FOLDER --index DIR`.");
  } catch (err) {
    say($("about"), err.message, true);
  }
}

// --- search ---------------------------------------------------------------------------------------------
let searches = 0;  // the searches started: only the latest one's answer is shown

async function search(body, description) {
  const asked = ++searches;
  const message = $("search-message");
  const where = $("search-where").value.trim();  // the metadata filter applies to every kind of search
  if (where) {
    if (body instanceof FormData) body.append("where", where);
    else body.where = where;
    description += ` where ${where}`;
  }
  say(message, `Searching ${description}…`);
  $("results").replaceChildren();
  try {
    const options = body instanceof FormData
      ? { method: "POST", body }
      : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const answer = await api("/v1/search", options);
    if (asked !== searches) return;  // a later search was started meanwhile: its answer is the one to show
    showResults(answer.results);
    say(message, answer.results.length
      ? `${answer.results.length} results ${description}, best first (score: cosine similarity).`
      : where ? "No results: no indexed image matches the filter." : "No results: the index is empty.");
  } catch (err) {
    if (asked === searches) say(message, err.message, true);
  }
}

function showResults(results, list = $("results"), label = (hit, rank) => `#${rank + 1} · ${hit.score.toFixed(4)} · ${hit.name}`) {
  const items = results.map((hit, rank) => {
    const item = document.createElement("li");
    const figure = document.createElement("figure");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "thumb";
    open.setAttribute("aria-label", `Show ${hit.name} full size`);
    const image = document.createElement("img");
    image.src = hit.thumbnail_url;
    image.alt = hit.name;
    image.loading = "lazy";
    open.append(image);
    open.addEventListener("click", () => showImage(hit));
    const caption = document.createElement("figcaption");
    caption.textContent = label(hit, rank);
    const meta = hit.metadata;
    if (meta) {  // date taken ("~": the file's date, no EXIF date) and camera
      const date = meta.date && (meta.date_source === "mtime" ? "~" : "") + meta.date.slice(0, 16).replace("T", " ");
      caption.append(document.createElement("br"), [date, meta.camera].filter(Boolean).join(" · "));
    }
    const similar = document.createElement("button");
    similar.type = "button";
    similar.className = "similar";
    similar.textContent = "Similar images";
    similar.addEventListener("click", () => search({ id: hit.id, k: RESULTS }, `like ${hit.name}`));
    caption.append(document.createElement("br"), similar);
    figure.append(open, caption);
    item.append(figure);
    return item;
  });
  list.replaceChildren(...items);
}

function showImage(hit) {
  const frame = hit.time !== null && hit.time !== undefined;  // a video frame: its video, at that moment
  $("viewer-image").hidden = frame;
  $("viewer-video").hidden = !frame;
  if (frame) {
    $("viewer-video").src = hit.image_url;
  } else {
    $("viewer-video").removeAttribute("src");
    $("viewer-image").src = hit.image_url;
  }
  $("viewer-image").alt = hit.name;
  $("viewer-caption").textContent = `${hit.name} · score ${hit.score.toFixed(4)}`;
  $("viewer").showModal();
}

function searchByImage(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(RESULTS));
  search(form, `like ${file.name || "the pasted image"}`);
}

// --- classify -------------------------------------------------------------------------------------------
let classifyImage = null;

function setClassifyImage(file) {
  classifyImage = file;
  const preview = $("classify-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `The image to classify: ${file.name || "pasted image"}`;
  preview.hidden = false;
  say($("classify-message"), "");
}

async function classify() {
  const message = $("classify-message");
  const labels = $("labels").value.split(/[,\n]/).map((l) => l.trim()).filter(Boolean);
  if (!classifyImage) return say(message, "Choose or drop an image to classify first.", true);
  if (!labels.length) return say(message, "Type at least one label.", true);
  const form = new FormData();
  form.append("file", classifyImage);
  labels.forEach((label) => form.append("labels", label));
  const template = $("template").value.trim();
  if (template) form.append("templates", template);
  say(message, "Classifying…");
  $("bars").replaceChildren();
  try {
    const answer = await api("/v1/classify", { method: "POST", body: form });
    showBars(answer.results);
    say(message, "Sigmoid probabilities: each label on its own, they need not add up to 1.");
  } catch (err) {
    say(message, err.message, true);
  }
}

function showBars(results) {
  const rows = results.map(({ label, score }) => {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * score).toFixed(2)}%`;
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(score));
    bar.setAttribute("aria-label", label);
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * score).toFixed(1)}%`;
    row.append(name, track, value);
    return row;
  });
  $("bars").replaceChildren(...rows);
}

// --- duplicates ------------------------------------------------------------------------------------------
async function findDuplicates() {
  const message = $("dedup-message");
  const threshold = $("dedup-threshold").value;
  say(message, "Comparing every pair of indexed images…");
  $("dedup-groups").replaceChildren();
  try {
    const answer = await api(`/v1/dedup?threshold=${encodeURIComponent(threshold)}`);
    const groups = answer.groups.map((group) => {
      const members = [{ ...group.keeper, score: 1 }, ...group.members.map((m) => ({ ...m, score: m.similarity }))];
      const list = document.createElement("ul");
      list.className = "grid";
      list.setAttribute("aria-label", `Duplicates of ${group.keeper.name}`);
      showResults(members, list, (hit, rank) => rank ? `${hit.score.toFixed(4)} · ${hit.name}` : `keep · ${hit.name}`);
      return list;
    });
    $("dedup-groups").replaceChildren(...groups);
    say(message, `${answer.groups.length} groups, ${answer.duplicates} duplicates among ${answer.images} images ` +
      "(the first of each group is the one to keep: largest, then oldest). Nothing is moved or deleted.");
  } catch (err) {
    say(message, err.message, true);
  }
}

// --- images in: drop, paste, choose ---------------------------------------------------------------------
function firstImage(files) {
  return Array.from(files || []).find((file) => file.type.startsWith("image/")) || (files && files[0]) || null;
}

function dropZone(zone, use) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = firstImage(event.dataTransfer.files);
    if (file) use(file);
  });
  const input = $(zone.dataset.target);
  input.addEventListener("change", () => { if (input.files[0]) use(input.files[0]); input.value = ""; });
  // the "choose a file" labels act as buttons from the keyboard
  zone.querySelectorAll("label.button").forEach((label) => label.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  dropZone($("search-drop"), searchByImage);
  dropZone($("classify-drop"), setClassifyImage);
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.files);
    if (!file) return;
    event.preventDefault();
    if ($("classify-form").contains(document.activeElement)) setClassifyImage(file);
    else searchByImage(file);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("search-text").value.trim();
    if (!text) return say($("search-message"), "Type something to search for.", true);
    search({ text, k: RESULTS }, `for “${text}”`);
  });
  $("classify-form").addEventListener("submit", (event) => { event.preventDefault(); classify(); });
  $("dedup-form").addEventListener("submit", (event) => { event.preventDefault(); findDuplicates(); });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    document.cookie = `${KEY_COOKIE}=${encodeURIComponent($("key-input").value)}; path=/; SameSite=Strict`;
    $("key-panel").hidden = true;
    loadInfo();
  });
  loadInfo();
});
