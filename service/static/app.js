// aecluster's page: inspect one image, browse the clusters of a model version.
// Plain browser JavaScript, no build step, no other origin: it calls the public native API
// only (GET /v1/models, POST .../versions/{v}:cluster, GET .../versions/{v}/clusters).
"use strict";

(() => {
  const TOP_K = 3;
  // Below this many displayed pixels per image pixel the browser's smoothing blurs the
  // picture into mush (an 8x8 digit); nearest-neighbour scaling keeps the pixels honest.
  const PIXELATE_BELOW = 0.75;

  const state = {
    models: [],          // entries of GET /v1/models
    current: null,       // the selected entry
    clusters: null,      // answer of GET .../clusters for the selected version
    clustersError: null, // why there is none
    lastFile: null,      // re-run when the model changes
    lastCluster: null,   // cluster of the last image, highlighted in the clusters view
    lastPrediction: null, // re-rendered once the clusters (p50, p99, labels) arrive
    originalUrl: null,   // blob: URL of the chosen image (revoked when replaced)
    sequence: 0,         // answers to superseded requests are dropped
  };

  const $ = (id) => document.getElementById(id);

  /** An API failure with the service's own message ({"error": ...}) when it sent one. */
  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(`could not reach the service (${err.message})`, 0);
    }
    const type = response.headers.get("content-type") || "";
    let body = null;
    if (type.includes("json")) {
      try {
        body = await response.json();
      } catch (err) {
        body = null;
      }
    }
    if (!response.ok) {
      const detail = body && typeof body.error === "string"
        ? body.error : `${response.status} ${response.statusText}`.trim();
      throw new ApiError(`${detail} (HTTP ${response.status} from ${path})`, response.status);
    }
    if (body === null) {
      throw new ApiError(`${path}: expected JSON, got ${type || "no content type"}`,
        response.status);
    }
    return body;
  }

  /** A new element; children are nodes or strings (always text, never parsed as HTML). */
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function showError(message) {
    $("error-text").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  function number(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "n/a";
  }

  /** Nearest-neighbour scaling for images shown much larger than they are. */
  function fitPixels(img) {
    const apply = () => {
      const shown = img.clientWidth || img.width;
      const tiny = img.naturalWidth > 0 && shown > 0 && img.naturalWidth / shown < PIXELATE_BELOW;
      img.classList.toggle("pixelated", tiny);
    };
    if (img.complete && img.naturalWidth > 0) apply();
    img.addEventListener("load", apply);
  }

  function versionPath(entry) {
    return `/v1/models/${encodeURIComponent(entry.name)}/versions/${entry.version}`;
  }

  function describeInput(input) {
    if (!input) return "";
    const mode = input.color_mode ? ` ${input.color_mode}` : "";
    return `${input.width}×${input.height}${mode}`;
  }

  // ---- models -------------------------------------------------------------------------

  async function loadModels() {
    const modelSelect = $("model-select");
    const previous = state.current;
    try {
      const body = await api("/v1/models");
      state.models = Array.isArray(body.models) ? body.models : [];
    } catch (err) {
      state.models = [];
      showError(err.message);
    }
    modelSelect.replaceChildren();
    const names = [...new Set(state.models.map((m) => m.name))].sort();
    if (names.length === 0) {
      modelSelect.append(el("option", {}, "no model loaded"));
      modelSelect.disabled = true;
      $("version-select").replaceChildren();
      $("version-select").disabled = true;
      selectVersion(null);
      $("status").textContent =
        "The service has no model loaded yet; press Refresh once a bundle is in its repository.";
      return;
    }
    for (const name of names) modelSelect.append(el("option", { value: name }, name));
    modelSelect.disabled = false;
    modelSelect.value = previous && names.includes(previous.name) ? previous.name : names[0];
    fillVersions(previous ? previous.version : null);
  }

  function fillVersions(preferred) {
    const name = $("model-select").value;
    const versions = state.models.filter((m) => m.name === name)
      .map((m) => m.version).sort((a, b) => b - a);
    const select = $("version-select");
    select.replaceChildren(...versions.map((v, i) =>
      el("option", { value: v }, i === 0 ? `${v} (latest)` : String(v))));
    select.disabled = versions.length === 0;
    select.value = String(versions.includes(preferred) ? preferred : versions[0]);
    selectVersion(state.models.find((m) => m.name === name && String(m.version) === select.value));
  }

  function selectVersion(entry) {
    const changed = !state.current || !entry || state.current.name !== entry.name
      || state.current.version !== entry.version;
    state.current = entry || null;
    if (!changed) return;
    state.clusters = null;
    state.clustersError = null;
    state.lastCluster = null;
    state.lastPrediction = null;
    $("model-info").textContent = entry
      ? `input ${describeInput(entry.input)} · ${entry.n_clusters} clusters`
        + ` · latent ${entry.latent_dim}`
        + (entry.labels ? " · labelled" : "")
      : "";
    $("input-hint").textContent = entry
      ? `PNG or JPEG; it is resized to the model's input, ${describeInput(entry.input)}.`
      : "PNG or JPEG; it is resized to the model's input.";
    renderClusters();
    if (!entry) return;
    loadClusters(entry);
    if (state.lastFile) inspect(state.lastFile);
  }

  // ---- clusters -----------------------------------------------------------------------

  async function loadClusters(entry) {
    $("clusters-status").textContent = "Loading the clusters…";
    try {
      const body = await api(`${versionPath(entry)}/clusters`);
      if (state.current !== entry) return;
      state.clusters = body;
    } catch (err) {
      if (state.current !== entry) return;
      state.clustersError = err.message;
    }
    if (state.lastPrediction) renderPrediction(state.lastPrediction);
    else renderClusters();
  }

  function clusterInfo(id) {
    if (!state.clusters || !Array.isArray(state.clusters.clusters)) return null;
    return state.clusters.clusters.find((c) => c.cluster_id === id) || null;
  }

  function hasExemplars() {
    return Boolean(state.clusters && state.clusters.clusters.some(
      (c) => Array.isArray(c.exemplars) && c.exemplars.length > 0));
  }

  function exemplarStrip(cluster, limit) {
    const urls = (cluster.exemplars || []).slice(0, limit);
    if (urls.length === 0) {
      return el("p", { className: "muted" }, "No exemplars stored for this cluster.");
    }
    const strip = el("ul", {
      className: "exemplars", "aria-label": `Exemplars of cluster ${cluster.cluster_id}`,
    });
    const labelled = cluster.label !== null && cluster.label !== undefined;
    urls.forEach((url, i) => {
      const img = el("img", {
        src: url, className: "thumb", loading: "lazy", width: 56, height: 56,
        alt: `Exemplar ${i + 1} of cluster ${cluster.cluster_id}`
          + (labelled ? ` (label ${cluster.label})` : ""),
      });
      fitPixels(img);
      strip.append(el("li", {}, img));
    });
    return strip;
  }

  function renderClusters() {
    const grid = $("cluster-grid");
    const status = $("clusters-status");
    const summary = $("clusters-summary");
    grid.replaceChildren();
    summary.textContent = "";
    const entry = state.current;
    $("clusters-title").textContent = entry
      ? `All clusters of ${entry.name}, version ${entry.version}` : "All clusters";
    if (!entry) {
      status.textContent = "No model selected.";
      return;
    }
    if (state.clustersError) {
      status.textContent = `The clusters could not be loaded: ${state.clustersError}`;
      return;
    }
    if (!state.clusters) {
      status.textContent = "Loading the clusters…";
      return;
    }
    const clusters = [...state.clusters.clusters].sort((a, b) => a.cluster_id - b.cluster_id);
    const total = clusters.reduce((sum, c) => sum + (c.size || 0), 0);
    const largest = Math.max(1, ...clusters.map((c) => c.size || 0));
    summary.textContent = `${clusters.length} clusters, ${total} training images`
      + ` · input ${describeInput(state.clusters.input)}`
      + (state.clusters.labels ? " · labels from the training data" : " · no labels");
    status.textContent = hasExemplars() ? ""
      : "This model version has no exemplars: its bundle was exported without thumbnails, "
        + "so only sizes and distances are shown.";
    for (const cluster of clusters) {
      const mine = cluster.cluster_id === state.lastCluster;
      const share = total > 0 ? (100 * cluster.size / total).toFixed(1) : "0";
      const card = el("article", {
        className: mine ? "cluster-card current" : "cluster-card",
        id: `cluster-${cluster.cluster_id}`,
        "aria-labelledby": `cluster-${cluster.cluster_id}-title`,
      },
      el("h3", { id: `cluster-${cluster.cluster_id}-title` },
        `Cluster ${cluster.cluster_id}`,
        cluster.label !== null && cluster.label !== undefined
          ? el("span", { className: "tag" }, `label ${cluster.label}`) : null,
        mine ? el("span", { className: "tag mine" }, "your image") : null),
      el("p", { className: "size" },
        el("meter", { min: 0, max: largest, value: cluster.size || 0,
          "aria-label": `Size of cluster ${cluster.cluster_id}` }),
        ` ${cluster.size} images (${share} %)`),
      el("p", { className: "muted" },
        `distance p50 ${number(cluster.distance_p50, 3)}, p99 ${number(cluster.distance_p99, 3)}`),
      exemplarStrip(cluster, 8));
      grid.append(card);
    }
  }

  // ---- one image ----------------------------------------------------------------------

  function setOriginal(file) {
    if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
    state.originalUrl = URL.createObjectURL(file);
    $("original-img").src = state.originalUrl;
  }

  async function inspect(file) {
    clearError();
    if (file.type && !file.type.startsWith("image/")) {
      showError(`${file.name} is not an image (${file.type}); choose a PNG or JPEG file.`);
      return;
    }
    const entry = state.current;
    if (!entry) {
      showError("No model is loaded: there is nothing to cluster the image with.");
      return;
    }
    state.lastFile = file;
    const sequence = ++state.sequence;
    $("status").textContent =
      `Clustering ${file.name || "the image"} with ${entry.name} v${entry.version}…`;
    const form = new FormData();
    form.append("file", file, file.name || "image.png");
    form.append("return_reconstruction", "png");
    form.append("top_k", String(Math.max(1, Math.min(TOP_K, entry.n_clusters || TOP_K))));
    let body;
    try {
      body = await api(`${versionPath(entry)}:cluster`, { method: "POST", body: form });
    } catch (err) {
      if (sequence !== state.sequence) return;
      $("status").textContent = "";
      $("result").hidden = true;
      showError(err.message);
      return;
    }
    if (sequence !== state.sequence) return;
    const prediction = body.predictions && body.predictions[0];
    if (!prediction) {
      showError("The service answered without a prediction.");
      return;
    }
    setOriginal(file);
    renderPrediction(prediction);
    $("status").textContent = `${file.name || "The image"}: cluster ${prediction.cluster_id}`
      + ` (${body.model} v${body.version}).`;
  }

  function renderPrediction(p) {
    state.lastCluster = p.cluster_id;
    state.lastPrediction = p;
    const info = clusterInfo(p.cluster_id);
    $("r-cluster").textContent = String(p.cluster_id);
    $("r-label").textContent = p.label === null || p.label === undefined
      ? "none (the model has no labels)" : String(p.label);
    $("r-distance").textContent = number(p.distance, 3)
      + (info
        ? ` (cluster p50 ${number(info.distance_p50, 3)}, p99 ${number(info.distance_p99, 3)})`
        : "");
    const outlier = $("r-outlier");
    outlier.textContent = p.is_outlier
      ? "yes: farther from the centroid than 99 % of the cluster's training images"
      : "no";
    outlier.className = p.is_outlier ? "flag-outlier" : "";
    $("r-psnr").textContent = typeof p.psnr === "number" ? `${number(p.psnr, 2)} dB` : "n/a";
    $("r-error").textContent = number(p.reconstruction_error, 5);
    const topk = $("r-topk");
    topk.replaceChildren();
    if (Array.isArray(p.top_k) && p.top_k.length > 0) {
      topk.append(el("ol", { className: "topk" }, ...p.top_k.map((t) => {
        const other = clusterInfo(t.cluster_id);
        const label = other && other.label !== null && other.label !== undefined
          ? `, label ${other.label}` : "";
        return el("li", {}, `cluster ${t.cluster_id}${label}: ${number(t.distance, 3)}`);
      })));
    } else {
      topk.textContent = "n/a";
    }
    const recon = $("reconstruction-img");
    if (p.reconstruction && p.reconstruction.b64) {
      recon.src = `data:image/png;base64,${p.reconstruction.b64}`;
    } else {
      recon.removeAttribute("src");
    }
    $("result").hidden = false;
    renderResultExemplars();
    renderClusters();
  }

  function renderResultExemplars() {
    const target = $("r-exemplars");
    const id = state.lastCluster;
    if (id === null) return;
    $("exemplars-title").textContent = `Exemplars of cluster ${id}`;
    target.replaceChildren();
    if (state.clustersError) {
      target.append(el("p", { className: "muted" },
        `Exemplars unavailable: ${state.clustersError}`));
      return;
    }
    if (!state.clusters) {
      target.append(el("p", { className: "muted" }, "Loading the exemplars…"));
      return;
    }
    const info = clusterInfo(id);
    if (!hasExemplars() || !info) {
      target.append(el("p", { className: "muted" },
        "This model version has no exemplars: its bundle was exported without thumbnails."));
      return;
    }
    target.append(exemplarStrip(info, 10));
  }

  // ---- views and input ----------------------------------------------------------------

  function showView() {
    // Other fragments (the skip link's #main) leave the view as it is.
    const views = { "": "inspect", "#inspect": "inspect", "#clusters": "clusters" };
    const view = views[location.hash];
    if (!view) return;
    for (const name of ["inspect", "clusters"]) {
      $(`view-${name}`).hidden = name !== view;
      const tab = $(`tab-${name}`);
      if (name === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
  }

  function firstImage(files) {
    return files && files.length > 0 ? files[0] : null;
  }

  function wireInput() {
    const input = $("file-input");
    input.addEventListener("change", () => {
      const file = firstImage(input.files);
      if (file) inspect(file);
      input.value = ""; // choosing the same file again still fires "change"
    });
    const zone = $("drop-zone");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = firstImage(event.dataTransfer && event.dataTransfer.files);
      if (file) inspect(file);
      else showError("Nothing to cluster was dropped: drop an image file.");
    });
    // A file dropped beside the zone would make the browser navigate away to it.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => event.preventDefault());
    }
    document.addEventListener("paste", (event) => {
      const items = event.clipboardData ? [...event.clipboardData.files] : [];
      const file = items.find((f) => f.type.startsWith("image/"));
      if (file) {
        location.hash = "#inspect";
        inspect(file);
      }
    });
  }

  function start() {
    for (const img of document.querySelectorAll("img.picture")) fitPixels(img);
    $("model-select").addEventListener("change", () => fillVersions(null));
    $("version-select").addEventListener("change", () => {
      const name = $("model-select").value;
      const version = $("version-select").value;
      selectVersion(state.models.find((m) => m.name === name && String(m.version) === version));
    });
    $("refresh-models").addEventListener("click", () => {
      clearError();
      loadModels();
    });
    $("error-close").addEventListener("click", clearError);
    window.addEventListener("hashchange", showView);
    wireInput();
    showView();
    loadModels();
  }

  start();
})();
