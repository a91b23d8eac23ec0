// RealisID's frontend extension: UI graphs saved by earlier versions of the pack load with the right widget
// values. The rules live in legacy_widgets.json, which the headless runner reads too.
import { app } from "../../scripts/app.js";

const RULES_URL = new URL("./legacy_widgets.json", import.meta.url);
let rules = null;

async function legacyRules() {
  rules ??= fetch(RULES_URL).then((response) => response.json());
  return rules;
}

function migrateNodes(nodes, table) {
  for (const node of nodes ?? []) {
    const rule = table[node.type];
    const values = node.widgets_values;
    if (!rule || !Array.isArray(values) || values.length !== rule.old_count) continue;
    node.widgets_values = values.filter((_, index) => !rule.dropped.includes(index));
    console.info(`RealisID: node ${node.id} (${node.type}) migrated: ${rule.why}`);
  }
}

app.registerExtension({
  name: "RealisID.LegacyWidgets",
  async beforeConfigureGraph(graph) {
    const table = await legacyRules();
    migrateNodes(graph?.nodes, table);
    for (const subgraph of graph?.definitions?.subgraphs ?? []) migrateNodes(subgraph.nodes, table);
  },
});
